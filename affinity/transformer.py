"""Model kind ``transformer``: a pretrained Hugging Face encoder with LoRA adapters and one head per task.

The encoder is loaded with ``transformers`` from a local folder (never downloaded: the hub is
kept offline while loading); ``peft`` inserts LoRA adapters into its target modules. Everything
but the adapters and the heads is frozen (``requires_grad`` False), so the engine's stages train,
differentiate and project the adapters (and the heads) only. The encoder's own dropout is off:
base training, fine-tuning and the gradients see the same deterministic network.

Inputs are the token ids of a dataset tokenized once (:func:`encode_texts`): an int64 tensor
``(rows, 2, length)`` holding input ids and token type ids, padded with the tokenizer's pad id to
the dataset's longest text. A batch is cut to its own longest text before the encoder runs
(:meth:`TransformerMultiTask.compact_inputs`), so padding costs per batch, not per dataset.

A decoder (GPT-2, Llama: measured when it loads, :func:`_causal`) keeps its causal attention under the padding
mask, is pooled at its last real token by default (``model.pooling: auto``) and gets no token type ids.

It has the interface of affinity/models.py: ``n_tasks``, ``forward(x) -> (batch, n_tasks)``,
``forward_tasks``, ``layers()`` (the LoRA parameters layer by layer, the heads last) and
``task_parameters()`` (the heads).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from affinity.data.table import DataError, SplitTable
from affinity.manifest import ModelSpec
from affinity.messages import first_line
from affinity.models import TaskNorm
from affinity.transformer_folder import check_max_length, model_folder
from affinity.torchvision_compat import import_torchvision

import_torchvision()  # before transformers (which loads torchvision when it is installed) is imported

_FALLBACK_TARGETS = ("query", "value", "q_proj", "v_proj", "q", "v", "q_lin", "v_lin", "c_attn")


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@functools.lru_cache(maxsize=2)
def _tokenizer(folder: str):
    _offline()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - a malformed tokenizer file (any error type): one line naming the field
        raise DataError(
            f"model.pretrained {folder!r}: no usable tokenizer ({first_line(exc)}); give a folder that "
            "holds the model's tokenizer files"
        ) from None


@functools.lru_cache(maxsize=2)
def _pretrained(folder: str) -> nn.Module:
    _offline()
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
            if hasattr(config, key):
                setattr(config, key, 0.0)
        model = AutoModel.from_pretrained(folder, config=config, local_files_only=True, attn_implementation="eager")
    except Exception as exc:  # noqa: BLE001 - a malformed config, a truncated or Git LFS pointer weight file, ...
        raise DataError(
            f"model.pretrained {folder!r}: cannot load the model ({first_line(exc)}); give a folder "
            "with config.json and the weights"
        ) from None
    return model.eval()


def encode_texts(data: SplitTable, spec: ModelSpec) -> SplitTable:
    """The dataset's texts as token ids ``(rows, 2, length)`` (input ids, token type ids), tokenized once."""
    if data.texts is None:
        raise DataError("model.kind 'transformer' takes text datasets; set dataset.kind to 'text'")
    folder = model_folder(spec)
    tok = _tokenizer(str(folder))
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}  # the model's own loading names what is wrong with it
    check_max_length(spec, config, getattr(tok, "model_max_length", None))
    if tok.pad_token is None:  # a decoder's tokenizer (GPT-2, Llama) may have none: pad with its end of text
        if tok.eos_token is None:
            raise DataError(f"model.pretrained {Path(spec.pretrained).name!r}: its tokenizer has neither a padding "
                            "nor an end-of-text token; save the tokenizer with a pad_token set")
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"  # pooling and the per-batch cut read the real tokens first (Llama's pad left)
    first = [t[0] for t in data.texts]
    second = [t[1] for t in data.texts] if data.texts and len(data.texts[0]) > 1 else None
    enc = tok(first, second, truncation=True, max_length=spec.max_length, padding="longest",
              return_token_type_ids=True, return_tensors="np")
    ids = enc["input_ids"].astype(np.int64)
    types = enc["token_type_ids"].astype(np.int64)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = np.where(enc["attention_mask"] > 0, ids, pad)
    X = np.stack([ids, types], axis=1)
    from dataclasses import replace

    return replace(data, X=X, metadata={**data.metadata, "pad_id": int(pad), "tokens": int(ids.shape[1])})


class TransformerMultiTask(nn.Module):
    """LoRA-adapted encoder, pooled output, one linear head per task.

    With ``task_norm`` a shared layer (``neck``: hidden → hidden, trained) sits between the pooled
    output and the heads, followed by a per-task normalization of its units (``norm``,
    :class:`affinity.models.TaskNorm`: own scale, shift and statistics per task) and GELU: the shared
    units whose task priority ``training.mtl_method = connection_strength`` learns (the LoRA adapters
    take the plain sum of the task gradients there)."""

    def __init__(self, encoder: nn.Module, n_tasks: int, hidden: int, pad_id: int, pooling: str,
                 task_norm: bool = False, causal: bool = False, token_types: bool = True) -> None:
        super().__init__()
        self.n_tasks = n_tasks
        self.encoder = encoder
        self.pad_id = pad_id
        self.causal = causal  # a decoder: position i attends to positions ≤ i only
        self.token_types = token_types  # the encoder embeds token type ids (BERT); a decoder's are not passed
        self.pooling = ("last" if causal else "mean") if pooling == "auto" else pooling
        self.neck = nn.Linear(hidden, hidden) if task_norm else None
        self.norm = TaskNorm(n_tasks, hidden) if task_norm else None
        self.takes_mask = task_norm  # task_forward passes the label mask (per-task statistics of the norm)
        self.head_weight = nn.Parameter(torch.empty(n_tasks, hidden))
        self.head_bias = nn.Parameter(torch.zeros(n_tasks))
        nn.init.normal_(self.head_weight, std=hidden ** -0.5)
        self.max_batch_rows = 512  # rows per no-grad evaluation batch (activations scale with sequence length)

    def compact_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The batch cut to its longest text (padding is per batch)."""
        if torch._C._functorch.is_functorch_wrapped_tensor(x):
            return x
        length = int((x[:, 0] != self.pad_id).sum(1).max().clamp_min(1))
        return x[:, :, :length]

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        x = self.compact_inputs(x)
        ids, types = x[:, 0], x[:, 1]
        mask = ids != self.pad_id
        # An additive 4-D mask, used as given: no data-dependent shortcut (which torch.func's vmap refuses). Given
        # as 4-D it replaces a decoder's own causal mask, so a decoder's is built here: keys ≤ the query's position.
        allowed = mask[:, None, None, :]
        if self.causal:
            length = ids.shape[1]
            allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()
        bias = (~allowed).float() * torch.finfo(torch.float32).min
        h = self.encoder(input_ids=ids, attention_mask=bias,
                         **({"token_type_ids": types} if self.token_types else {})).last_hidden_state
        if self.pooling == "cls":
            return h[:, 0]
        if self.pooling == "last":  # the last real token (texts are padded on the right)
            last = (mask.sum(1) - 1).clamp_min(0)
            return h.gather(1, last[:, None, None].expand(-1, 1, h.shape[-1])).squeeze(1)
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                tasks: torch.Tensor | None = None) -> torch.Tensor:
        """Raw outputs ``(batch, n_tasks)``, or ``(batch, len(tasks))`` for the given task indices; ``mask``
        (rows × tasks): the rows labelled for each task (the task norm's training-mode statistics)."""
        w, b = (self.head_weight, self.head_bias) if tasks is None else (self.head_weight[tasks], self.head_bias[tasks])
        h = self.pooled(x)
        if self.neck is None:
            return h @ w.T + b
        h = self.neck(h)
        h = self.norm(h) if mask is None and tasks is None else self.norm(h, mask, tasks)
        return (nn.functional.gelu(h) * w).sum(-1) + b

    def forward_tasks(self, x: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        h = self.pooled(x)
        if self.neck is not None:
            if self.training:
                return self.forward(x).gather(1, tasks[:, None]).squeeze(1)
            h = nn.functional.gelu(self.norm.forward_rows(self.neck(h), tasks))
        return (h * self.head_weight[tasks]).sum(-1) + self.head_bias[tasks]

    def task_parameters(self) -> list[str]:
        """The heads (and the task norm's scales and shifts); axis 0 of each indexes the task."""
        return ["head_weight", "head_bias"] + (["norm.weight", "norm.bias"] if self.norm is not None else [])

    def task_norm_layers(self) -> list[tuple[str, nn.Linear, TaskNorm]]:
        """The shared neck with the per-task norm that follows it (empty without ``model.task_norm``)."""
        return [] if self.neck is None else [("neck", self.neck, self.norm)]

    def layers(self) -> list[list[str]]:
        """The LoRA parameters grouped by the encoder block they adapt, input to output; the neck; the
        task-specific parameters last."""
        own = set(self.task_parameters())
        groups: dict[str, list[str]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad or name in own or name.startswith("neck."):
                continue
            key = name.split(".lora_")[0]
            block = _block_of(key)
            groups.setdefault(block, []).append(name)
        neck = [["neck.weight", "neck.bias"]] if self.neck is not None else []
        return [*groups.values(), *neck, self.task_parameters()]

    def trainable_counts(self) -> dict[str, int]:
        """Parameters of the whole model, of the LoRA adapters, of the neck and of the task-specific ones."""
        total = sum(p.numel() for p in self.parameters())
        params = dict(self.named_parameters())
        heads = sum(params[n].numel() for n in self.task_parameters())
        neck = sum(p.numel() for p in self.neck.parameters()) if self.neck is not None else 0
        lora = sum(p.numel() for p in self.parameters() if p.requires_grad) - heads - neck
        return {"total": total, "lora": lora, "heads": heads, **({"neck": neck} if neck else {})}


def _block_of(name: str) -> str:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[:i + 1])
    return name


def default_targets(encoder: nn.Module) -> list[str]:
    """peft's LoRA target modules for the encoder's architecture, else the attention query/value layers found."""
    from peft.utils import constants

    mapping = getattr(constants, "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING", {})
    kind = getattr(encoder.config, "model_type", None)
    if kind in mapping:
        return list(mapping[kind])
    leaves = {n.rsplit(".", 1)[-1] for n, m in encoder.named_modules() if isinstance(m, nn.Linear)}
    found = [t for t in _FALLBACK_TARGETS if t in leaves]
    if not found:
        raise DataError(
            f"no default LoRA target modules for architecture {kind!r}; list its attention layers in "
            "model.target_modules"
        )
    return found


def build_transformer(spec: ModelSpec, data: SplitTable, seed: int) -> TransformerMultiTask:
    """The pretrained encoder with fresh LoRA adapters (seeded) and fresh heads."""
    from peft import LoraConfig, get_peft_model

    folder = str(model_folder(spec))
    encoder = copy.deepcopy(_pretrained(folder))
    targets = list(spec.target_modules) if spec.target_modules else default_targets(encoder)
    leaves = {n.rsplit(".", 1)[-1] for n, _ in encoder.named_modules()}
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in encoder.named_modules() if isinstance(m, nn.Linear)})
    missing = [t for t in targets if t not in leaves]
    if missing:
        raise DataError(
            f"model.target_modules {missing} are not modules of {Path(folder).name}; its linear layers are named "
            f"{linear}"
        )
    # peft adapts these; it refuses anything else with a dump of the module (not one line, no field named)
    adaptable = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d)
    try:
        from transformers.pytorch_utils import Conv1D

        adaptable += (Conv1D,)
    except ImportError:
        pass
    unsupported = sorted({n.rsplit(".", 1)[-1] for n, m in encoder.named_modules()
                          if n.rsplit(".", 1)[-1] in targets and not isinstance(m, adaptable)})
    if unsupported:
        raise DataError(
            f"model.target_modules {unsupported} name modules LoRA cannot adapt (not linear or embedding layers); "
            f"use some of {linear}"
        )
    torch.manual_seed(seed)
    config = LoraConfig(r=spec.lora_rank, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
                        target_modules=targets, bias="none")
    with warnings.catch_warnings():  # transformers' deprecation notices about attributes peft reads
        warnings.simplefilter("ignore", FutureWarning)
        lora = get_peft_model(encoder, config).base_model  # the LoraModel: no PeftModel forward signature in the way
    for name, p in lora.named_parameters():
        p.requires_grad_("lora_" in name)
    hidden = int(encoder.config.hidden_size)
    pad = int(data.metadata.get("pad_id", 0))
    return TransformerMultiTask(lora, data.n_tasks, hidden, pad, spec.pooling, spec.task_norm,
                                causal=_causal(folder), token_types=_token_types(encoder))


def _token_types(encoder: nn.Module) -> bool:
    """Whether the encoder embeds token type ids (BERT's segment embeddings). GPT-2 would look a type id up in its
    word embeddings, Llama takes none: a decoder gets none."""
    return int(getattr(encoder.config, "type_vocab_size", 0) or 0) > 0


@functools.lru_cache(maxsize=2)
def _causal(folder: str) -> bool:
    """Whether the pretrained model is a decoder (each position sees the positions before it only), measured,
    not read from its architecture's name: the first position's state does not move when the last token changes."""
    encoder = _pretrained(folder)
    vocab = int(getattr(encoder.config, "vocab_size", 0) or 0)
    if vocab < 4:
        return False
    ids = torch.tensor([[1, 2, 3], [1, 2, vocab - 1]])
    with torch.no_grad():
        h = encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    return bool(torch.allclose(h[0, 0], h[1, 0], atol=1e-6)) and not torch.allclose(h[0, 2], h[1, 2], atol=1e-6)
