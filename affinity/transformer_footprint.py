"""Model kind ``transformer``'s estimate of a job's peak memory and least running time, before it runs.

The encoder's size comes from its folder without loading it: ``config.json`` (hidden size, layers,
attention heads, feed-forward width) and the tensor shapes in the headers of its ``.safetensors``
files (every parameter, and the shape of each layer LoRA adapts; a folder with other weight files
is counted from its config). The parts follow what the engine allocates (affinity/transformer.py,
affinity/gradients.py, affinity/finetune.py), in bytes, on the CPU:

- the process: the interpreter with torch, transformers, peft and the tokenizer loaded;
- the encoder's frozen weights, held WEIGHT_COPIES times (the loaded encoder, the job's copy with
  its adapters, a fresh model for scratch and the group models);
- the token ids (rows × 2 × tokens, int64, a few copies while tokenizing);
- base training: the trainable parameters (LoRA adapters: rank × (inputs + outputs) per adapted
  layer; one head per task) with their gradients, Adam's two moments and the best state; the
  activations a batch keeps for the backward pass (per token and layer: ACT_HIDDEN × hidden +
  ACT_FFN × feed-forward width + ACT_ATTENTION × heads × tokens floats, the attention scores being
  tokens × tokens per head) and those of a no-grad evaluation batch (512 rows, one layer at a time);
- grad_tag: a chunk of rows (``estimation.chunk_rows``, fewer when ``estimation.memory_mb`` is
  small) run forward and backward at once (the chunk's activations), its per-sample LoRA gradients
  (chunk × parameters, held three times by the outer products), a second pass through the encoder
  by vmap when the heads are differentiated too (``estimation.params`` all or last), the projection
  matrix and the projected features as for every model (affinity/footprint.py);
- stacked fine-tunes (exact, scratch, ``grouping.selection: outcome``): ``estimation.exact_batch``
  copies of the trainable parameters (parameters, gradients, moments, best state, vmap's
  temporaries), a batch's activations and a validation pass on up to 512 rows (measured: they do
  not grow with the copies);
- tag_lookahead and gradient_cosine: up to 64 task gradients at once, through a batch (lookahead)
  or through every training row at once (gradient_cosine).

Sequence length is the dataset's longest text in tokens when the server knows it, else
``model.max_length`` (an upper bound: texts are cut there). Calibrated against the peak RSS of real
runs of the built-in text job (see the constants); it errs on the high side.

The time is a lower bound like the MLP's: the forward pass of a row costs 2 × (the encoder's
parameters outside the embeddings) × tokens + 4 × layers × tokens² × hidden operations; a
training step three forward passes (the backward pass reaches the inputs of every frozen layer);
a per-sample gradient three more plus its projection; at affinity.footprint.FLOPS.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from affinity.data.table import DataError
from affinity.footprint import (EVAL_ROWS, FEATURE_COPIES, MB, STACKED_COPY_PARAMS, VAL_ROWS, DatasetShape,
                                MemoryEstimate, TimeEstimate, checkpoint_count, job_seconds)
from affinity.messages import first_line
from affinity.manifest import Manifest, ModelSpec

PROCESS_BYTES = 700 * MB  # measured: 705 MB peak RSS once torch, transformers, peft, the tokenizer and texts are loaded
WEIGHT_COPIES = 3
# Floats per token and layer a forward pass keeps for its backward pass: ACT_HIDDEN × hidden + ACT_FFN × feed-forward
# width + ACT_ATTENTION × heads × tokens. Measured with all-MiniLM-L6-v2 (hidden 384, width 1536, 12 heads, 6 layers):
# 9,216 floats at 32 tokens (a batch of 128 rows: 864 MB), 10,930 at 128 tokens (32 rows: 1,025 MB); these give
# 9,984 and 12,288.
ACT_HIDDEN, ACT_FFN, ACT_ATTENTION = 12, 3, 2
# Floats per token of a no-grad pass (about one layer's at a time): measured 9,152 (128 rows × 32 tokens: 143 MB)
# and 8,050 (512 rows: 503 MB); these give 9,216 at 32 tokens.
EVAL_HIDDEN, EVAL_FFN, EVAL_ATTENTION = 10, 3, 2
EVAL_BATCH = 512  # TransformerMultiTask.max_batch_rows
# LoRA's default targets when model.target_modules is not set: peft's choice for the common architectures
# (the attention's query and value projections), as affinity.transformer.default_targets falls back to
DEFAULT_TARGETS = ("query", "value", "q_proj", "v_proj", "q", "v", "q_lin", "v_lin", "c_attn")


@dataclass(frozen=True)
class Architecture:
    """The sizes of a pretrained encoder that its memory and time depend on."""

    hidden: int
    layers: int
    heads: int
    ffn: int  # feed-forward width
    params: int  # every parameter of the encoder
    core: int  # parameters outside the embeddings (those a token's forward pass multiplies by)
    lora: int  # parameters of the LoRA adapters (model.lora_rank, model.target_modules)


def _first(config: dict, *keys: str, default: int | None = None) -> int:
    for k in keys:
        if isinstance(config.get(k), int) and config[k] > 0:
            return int(config[k])
    if default is None:
        raise DataError(f"model.pretrained: its config.json has none of {list(keys)}; give a Hugging Face model folder")
    return default


def _tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]] | None:
    """Every tensor's shape from the headers of the folder's .safetensors files (None without such files)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 64 * MB:
                raise DataError(f"model.pretrained: {path.name} has a {n}-byte header; not a safetensors file")
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end != path.stat().st_size:  # a truncated download or a Git LFS pointer
            raise DataError(f"model.pretrained: {path.name} has {path.stat().st_size} bytes but its header describes "
                            f"{8 + n + end}; the file is truncated or not the weights (a Git LFS pointer?)")
        shapes.update({k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"})
    return shapes


def architecture(spec: ModelSpec) -> Architecture:
    """The encoder of ``model.pretrained`` measured from its folder (config.json, safetensors headers)."""
    from affinity.transformer_folder import check_max_length, model_folder

    folder = model_folder(spec)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError(f"config.json holds a {type(config).__name__}, not an object")
        shapes = _tensor_shapes(folder)
    except (OSError, ValueError, KeyError, struct.error) as exc:
        raise DataError(f"model.pretrained {spec.pretrained!r}: cannot read its config.json or weights "
                        f"({first_line(exc)}); give a Hugging Face "
                        "model folder") from None
    h = _first(config, "hidden_size", "d_model", "n_embd", "dim")
    layers = _first(config, "num_hidden_layers", "num_layers", "n_layer", "n_layers")
    heads = _first(config, "num_attention_heads", "num_heads", "n_head", "n_heads")
    ffn = _first(config, "intermediate_size", "d_ff", "n_inner", "hidden_dim", "ffn_dim", default=4 * h)
    vocab = _first(config, "vocab_size", default=0)
    check_max_length(spec, config)
    r = spec.lora_rank
    if shapes:
        params = sum(math.prod(s) for s in shapes.values())
        embedded = sum(math.prod(s) for n, s in shapes.items() if "embed" in n or n.endswith(("wte.weight", "wpe.weight")))
        leaves = {n.rsplit(".", 2)[-2] for n, s in shapes.items() if n.endswith(".weight") and len(s) == 2 and "." in n}
        targets = list(spec.target_modules) if spec.target_modules else [t for t in DEFAULT_TARGETS if t in leaves]
        lora = sum(r * (s[0] + s[1]) for n, s in shapes.items()
                   if len(s) == 2 and n.endswith(".weight") and "." in n and n.rsplit(".", 2)[-2] in targets)
        core = params - embedded
    else:  # other weight formats: a transformer block's usual sizes
        core = layers * (4 * h * h + 2 * h * ffn)
        params = core + vocab * h
        targets = list(spec.target_modules) if spec.target_modules else ["query", "value"]
        lora = layers * len(targets) * r * 2 * h
    return Architecture(h, layers, heads, ffn, params, max(core, 1), max(lora, 1))


def _tokens(manifest: Manifest, shape: DatasetShape) -> int:
    return min(manifest.model.max_length, shape.tokens) if shape.tokens else manifest.model.max_length


def _activations(a: Architecture, rows: int, tokens: int) -> int:
    """Bytes a forward pass of ``rows`` keeps for its backward pass (every layer)."""
    return 4 * rows * tokens * a.layers * (ACT_HIDDEN * a.hidden + ACT_FFN * a.ffn + ACT_ATTENTION * a.heads * tokens)


def _layer(a: Architecture, rows: int, tokens: int) -> int:
    """Bytes of one layer's activations of ``rows`` (a no-grad pass holds about one layer at a time)."""
    return 4 * rows * tokens * (EVAL_HIDDEN * a.hidden + EVAL_FFN * a.ffn + EVAL_ATTENTION * a.heads * tokens)


def neck_params(model: ModelSpec, a: Architecture, tasks: int) -> int:
    """Parameters of the shared neck and its per-task norm (``model.task_norm``; affinity/transformer.py)."""
    return a.hidden * (a.hidden + 1) + 2 * tasks * a.hidden if model.task_norm else 0


def transformer_memory(manifest: Manifest, shape: DatasetShape) -> MemoryEstimate:
    """A transformer job's estimated peak memory (bytes), by part (see the module's docstring)."""
    model, training, est = manifest.model, manifest.training, manifest.estimation
    a = architecture(model)
    R, T = shape.rows, max(shape.tasks, 1)
    s = _tokens(manifest, shape)
    trainable = a.lora + T * (a.hidden + 1) + neck_params(model, a, T)
    pairs = math.ceil(shape.pairs * (1.0 - manifest.dataset.test_fraction))
    data_fields = shape.fields
    arch_fields = ("model.pretrained", "model.max_length")
    lora_fields = ("model.lora_rank", "model.target_modules")

    parts = {"process": PROCESS_BYTES, "model weights": WEIGHT_COPIES * 4 * a.params}
    fields: dict[str, tuple[str, ...]] = {"process": (), "model weights": ("model.pretrained",)}
    kept = 3 * 8 * 2 * R * s + 17 * R * T + 32 * pairs + 200 * R  # token ids, labels and masks, the texts

    batch = min(training.batch_size, R)
    kept_states = checkpoint_count(training.epochs) if est.method == "grad_tag" and est.checkpoint < 1 else 0
    train = (4 * trainable * (5 + kept_states) + _activations(a, batch, s)
             + _layer(a, min(EVAL_BATCH, EVAL_ROWS, R), s))
    if training.mtl_method != "equal":
        train += 2 * 4 * T * a.lora + T * _activations(a, batch, s) // max(a.layers, 1)
    stage: dict[str, int] = {"base training": train}
    fields["base training"] = ("training.batch_size",) + arch_fields + lora_fields

    def stacked(copies: int) -> int:
        if training.mtl_method != "equal":  # finetune.py: one model at a time
            return train
        # Measured (finetune_subsets on the built-in text job, 15 tokens): 16 copies add 270 MB, 4 copies 224 MB,
        # 16 copies with batch_size 128 the same 275 MB: the copies' parameters and optimizer states grow with the
        # copies, the activations of a batch and of a validation pass do not. Two batches' activations for margin
        # (vmap's batched temporaries): 16 copies of the built-in text job get 436 MB at 16 tokens.
        return (copies * 4 * STACKED_COPY_PARAMS * trainable + 2 * _activations(a, batch, s)
                + _layer(a, min(VAL_ROWS, EVAL_BATCH, R), s))

    if est.method == "grad_tag":
        d = est.projection_dim
        with_heads = est.params in ("all", "last")
        p = max(1, (a.lora + neck_params(model, a, T) if est.params != "last" or est.last_layers > 1 else 0)
                + (T * (a.hidden + 1) if with_heads else 0))
        budget = est.memory_mb * MB
        chunk = max(1, min(est.chunk_rows, budget // (12 * p)))
        gradients = 12 * p * chunk + _activations(a, chunk, s) * (2 if with_heads else 1)
        held = p * d * (6 if est.projection_precision == "bfloat16" else 4)
        projection = held if held <= budget // 2 else 2 * min(est.block_params, p) * d * 4
        per_subset = 24 * d * 8 + 8 * min(pairs, math.ceil(2 * min(est.subset_size, T) * pairs / T)) * 4
        fits = max(1, min(est.subset_batch, est.num_subsets, budget // per_subset)) * per_subset
        stage["projected features"] = (int(FEATURE_COPIES * 4 * pairs * d) + 3 * 8 * d * d
                                       + max(gradients + projection, fits))
        fields["projected features"] = ("estimation.chunk_rows", "estimation.projection_dim", "model.max_length",
                                        "estimation.memory_mb") + data_fields
    elif est.method in ("exact", "scratch"):
        stage["stacked fine-tunes"] = stacked(min(est.exact_batch, est.num_subsets))
        fields["stacked fine-tunes"] = ("estimation.exact_batch", "training.batch_size", "model.max_length") \
            + data_fields
    elif est.method == "tag_lookahead":
        stage["lookahead steps"] = 3 * 4 * min(64, T) * trainable + _activations(a, batch, s) \
            + min(64, T) * _layer(a, batch, s)
        fields["lookahead steps"] = ("training.batch_size", "model.max_length") + lora_fields
    elif est.method == "gradient_cosine":
        stage["task gradients"] = 8 * T * trainable + _activations(a, R, s) + min(64, T) * _layer(a, R, s)
        fields["task gradients"] = ("model.max_length",) + data_fields
    if manifest.grouping.selection == "outcome":
        # Measured: the built-in text job with its check (3 folds, 11 tasks) peaks at 1,448 MB; the check's
        # stacked group models run beside what the job holds from base training and the estimate (one more
        # batch's activations for it).
        stage["group models"] = stacked(min(est.exact_batch, T)) + _activations(a, batch, s) + (
            4 * pairs * est.projection_dim if est.method == "grad_tag" else 0)
        fields["group models"] = ("estimation.exact_batch", "training.batch_size", "model.max_length") + data_fields
    name, size = max(stage.items(), key=lambda kv: kv[1])
    parts["data"], fields["data"] = kept, data_fields
    parts[name] = size
    return MemoryEstimate(sum(parts.values()), parts, fields)


def transformer_seconds(manifest: Manifest, shape: DatasetShape) -> TimeEstimate:
    """How long a transformer job takes at least (see the module's docstring)."""
    a = architecture(manifest.model)
    s = _tokens(manifest, shape)
    forward = 2 * a.core * s + 4 * a.layers * s * s * a.hidden
    per_row = 3 * forward + forward  # a training step, and the validation pass
    p = a.lora + shape.tasks * (a.hidden + 1) + neck_params(manifest.model, a, shape.tasks)
    pair = 3 * forward + 2 * p * manifest.estimation.projection_dim
    return job_seconds(manifest, shape, per_row, pair, 3 * forward * max(shape.tasks, 1),
                       ("model.pretrained", "model.max_length"))
