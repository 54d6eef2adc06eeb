"""What a job needs, estimated from its manifest and its dataset's shape before it runs: the types, and
model kind ``mlp``'s estimate (each model kind declares its own, affinity/kinds.py; the server refuses a
manifest past its limits with them, api/resources.py).

The memory estimate of an MLP job follows what the engine allocates (affinity/pipeline.py and the stages it calls), in
bytes, on the CPU:

- the process itself: the interpreter with torch, numpy, pandas, scikit-learn and matplotlib
  loaded (~0.55 GB peak for a tiny job);
- the data while it is read and split: the raw table in float64 (X rows × features, Y rows ×
  tasks: labels are a dense matrix with NaN where a row is unlabelled), the float64 copy and
  temporaries of standardization, the float32 result and the boolean masks; afterwards the float32
  table, its tensors and masks stay for the whole job;
- base training: the parameters (``model.hidden``, features, one head per task) with their
  gradients, Adam's two moments and the best state; kept checkpoints (grad_tag with
  ``estimation.checkpoint`` < 1); a multitask aggregator's Jacobian (tasks × shared parameters);
  the activations of a batch and of an 8192-row evaluation batch;
- stacked models: ``estimation.exact_batch`` copies of the model trained together by vmap
  (affinity/finetune.py: parameters, gradients, two moments, the best state and vmap's
  temporaries per copy) for the exact and scratch estimators and for the group models of
  ``grouping.selection: outcome``;
- grad_tag: the per-sample gradient chunk (at most ``estimation.memory_mb``, at least one row of
  3 × parameters × 4 bytes), the projection matrix's cache or blocks, the projected features
  (labelled pairs × ``estimation.projection_dim`` × 4 bytes, held about 5.5 times over while they
  are split per task, packed and rotated), the surrogate metric (projection_dim² in float64,
  three times for the eigendecomposition) and a batch of surrogate fits (at most memory_mb).

The stages run one after the other: the peak is the process, plus the larger of the loading
phase and the data kept plus the largest stage. Calibrated against the peak RSS of real runs
(see the constants); it errs on the high side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from affinity.manifest import Manifest

MB = 2**20
PROCESS_BYTES = 600 * MB  # measured: ~390 MB after the imports, ~545 MB peak for the smallest job
FEATURE_COPIES = 5.5  # projected features: result, per-task blocks, packs (padded), rotated packs, Hessian temporaries
STACKED_COPY_PARAMS = 7  # per stacked model: parameters, gradients, m, v, best state, stacking and vmap temporaries
EVAL_ROWS = 8192  # evaluate_losses' batch of rows
GRAPH_LOAD_BYTES = 160  # per edge while a graph is read and Â built (ids, row numbers, COO, CSR, float64 Â)
GRAPH_KEPT_BYTES = 16  # per edge afterwards: the CSR adjacency, both directions (float32 value, int32 index)
VAL_ROWS = 4096  # the stacked models' validation batch


@dataclass
class DatasetShape:
    """What the memory of a job depends on in its dataset; ``fields`` are the manifest fields that set
    the shape (for messages)."""

    rows: int
    features: int
    tasks: int
    pairs: int  # labelled (row, task) pairs (an upper bound where only the table's size is known)
    fields: tuple[str, ...] = ("dataset.source",)
    values: dict[str, Any] = field(default_factory=dict)  # the fields' values (a built-in's defaults filled in)
    image: tuple[int, int, int] | None = None  # kind images: channels, height, width (features = their product)
    tokens: int | None = None  # texts: tokens of the longest text (None: as many as model.max_length allows)
    edges: int = 0  # a graph's edges (features are then the SIGN inputs: node features × (hops + 1))


@dataclass
class MemoryEstimate:
    total: int
    parts: dict[str, int] = field(default_factory=dict)  # what each part of the job needs, bytes
    fields: dict[str, tuple[str, ...]] = field(default_factory=dict)  # part -> the manifest fields that set it

    @property
    def mb(self) -> int:
        return math.ceil(self.total / MB)

    def biggest(self, n: int = 3) -> list[tuple[str, int]]:
        return sorted(self.parts.items(), key=lambda kv: -kv[1])[:n]


def model_size(features: int, hidden: list[int], tasks: int, task_norm: bool) -> tuple[int, int]:
    """(all parameters, shared parameters) of MultiTaskMLP (affinity/models.py)."""
    widths = [features, *hidden]
    shared = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))
    heads = tasks * (widths[-1] + 1)
    norms = 2 * tasks * sum(hidden) if task_norm else 0
    return shared + heads + norms, shared


@dataclass(frozen=True)
class ModelCost:
    """What the estimates need of a model kind on a dataset's shape: parameters (all, shared, and those
    Grad-TAG differentiates under the manifest's ``estimation.params`` / ``last_layers``), activation
    floats of one row through one task path (the MLP's summed widths), work of one row's forward pass in
    multiply-adds (an MLP's: its parameters), the rows of a no-grad evaluation batch, the manifest fields
    that set the model's size (for messages) and the hops of a graph propagation before it (SIGN)."""

    params: int
    shared: int
    activations: int
    work: int
    selected: int
    size_fields: tuple[str, ...]
    eval_rows: int = EVAL_ROWS
    hops: int = 0


def mlp_cost(manifest: Manifest, shape: DatasetShape) -> ModelCost:
    """The MLP (affinity/models.py) on the dataset's features."""
    model, est = manifest.model, manifest.estimation
    P, P_shared = model_size(shape.features, list(model.hidden), shape.tasks, model.task_norm)
    if est.params == "all":
        selected = P
    elif est.params == "encoder":
        selected = P_shared
    else:  # the heads and the last_layers − 1 shared layers below them
        widths = [shape.features, *model.hidden]
        layers = [(a + 1) * b for a, b in zip(widths[:-1], widths[1:])]
        k = min(est.last_layers - 1, len(layers))
        selected = shape.tasks * (widths[-1] + 1) + (sum(layers[len(layers) - k:]) if k > 0 else 0)
    return ModelCost(P, P_shared, sum(model.hidden), P, selected, ("model.hidden",))


def sign_cost(manifest: Manifest, shape: DatasetShape) -> ModelCost:
    """SIGN (affinity/sign.py): the MLP on the propagated features, after ``model.hops`` sparse products."""
    return replace(mlp_cost(manifest, shape), hops=manifest.model.hops)


def checkpoint_count(epochs: int) -> int:
    """len(affinity.training.checkpoint_epochs(epochs)), without importing torch here."""
    n, e = 0, 1.0
    while e <= epochs:
        n += 1
        e = max(e * 1.4, e + 1)
    return n


def mlp_memory(manifest: Manifest, shape: DatasetShape) -> MemoryEstimate:
    """An MLP job's estimated peak memory (bytes), by part (see the module's docstring)."""
    return layered_memory(manifest, shape, mlp_cost(manifest, shape))


def sign_memory(manifest: Manifest, shape: DatasetShape) -> MemoryEstimate:
    return layered_memory(manifest, shape, sign_cost(manifest, shape))


def layered_memory(manifest: Manifest, shape: DatasetShape, cost: ModelCost) -> MemoryEstimate:
    """The estimated peak memory (bytes), by part, of a job whose model ``cost`` describes (an MLP's, a conv
    net's: affinity/cnn_footprint.py; see the module's docstring)."""
    R, F, T = shape.rows, shape.features, shape.tasks
    model, training, est = manifest.model, manifest.training, manifest.estimation
    width_sum = cost.activations  # activation floats of one row (one task path)
    P, P_shared = cost.params, cost.shared
    pairs = math.ceil(shape.pairs * (1.0 - manifest.dataset.test_fraction))
    data_fields = shape.fields
    model_fields = cost.size_fields + data_fields

    load = 36 * R * F + 17 * R * T  # raw float64 table, float64 copy and temporaries, float32 result, masks
    kept = 4 * R * F + 17 * R * T + 32 * pairs  # float32 X and Y, label tensors, masks, pair indices
    load += GRAPH_LOAD_BYTES * shape.edges  # a graph's edge list, COO triples, CSR and Â while they are built
    kept += GRAPH_KEPT_BYTES * shape.edges  # its CSR adjacency (both directions)

    batch = min(training.batch_size, R)
    per_row = F + 3 * width_sum + 3 * T
    if model.task_norm:
        per_row += 6 * T * width_sum  # task norms expand every row to (tasks, units)
    activations = 4 * 4 * batch * per_row + 4 * 3 * min(cost.eval_rows, R) * (width_sum + T) * (T if model.task_norm else 1)
    kept_states = checkpoint_count(training.epochs) if est.method == "grad_tag" and est.checkpoint < 1 else 0
    train = 4 * P * (5 + kept_states) + activations
    if training.mtl_method != "equal":
        train += 2 * 4 * T * P_shared  # the aggregator's Jacobian: one row of shared parameters per task

    sequential = model.task_norm or training.mtl_method != "equal"  # finetune.py: one model at a time

    def stacked(copies: int) -> int:
        if sequential:
            return train
        rows = min(VAL_ROWS, R)
        return copies * (4 * STACKED_COPY_PARAMS * P + 4 * 4 * batch * (F + 3 * width_sum + 3 * T)
                         + 4 * 3 * rows * (width_sum + T))

    parts: dict[str, int] = {"process": PROCESS_BYTES}
    fields: dict[str, tuple[str, ...]] = {"process": ()}
    stage_parts: dict[str, int] = {}
    features_kept = 0
    if est.method == "grad_tag":
        d = est.projection_dim
        p = max(1, cost.selected)
        budget = est.memory_mb * MB
        chunk_rows = min(est.chunk_rows, max(1, budget // (12 * p)))
        gradients = 12 * p * chunk_rows + 4 * chunk_rows * (F + width_sum)
        low = est.projection_precision == "bfloat16"
        held = p * d * (6 if low else 4)
        projection = held if held <= budget // 2 else 2 * min(est.block_params, p) * d * (6 if low else 4)
        stage_parts["per-sample gradients"] = gradients + projection
        fields["per-sample gradients"] = ("estimation.memory_mb", "estimation.chunk_rows", *cost.size_fields,
                                          "estimation.projection_dim", "estimation.block_params")
        stage_parts["projected features"] = int(FEATURE_COPIES * 4 * pairs * d) + 3 * 8 * d * d
        fields["projected features"] = ("estimation.projection_dim",) + data_fields
        widest = min(pairs, math.ceil(2 * min(est.subset_size, T) * pairs / max(T, 1)))
        per_subset = 24 * d * 8 + 8 * widest * 4
        fits = max(1, min(est.subset_batch, est.num_subsets, budget // per_subset))
        stage_parts["surrogate fits"] = fits * per_subset
        fields["surrogate fits"] = ("estimation.memory_mb", "estimation.subset_batch", "estimation.projection_dim")
        features_kept = 4 * pairs * d if not manifest.compute.memmap else 0  # kept in the job's result
        # the larger of the gradient and the fit stages runs next to the features
        stage_parts["projected features"] += max(stage_parts.pop("per-sample gradients"),
                                                 stage_parts.pop("surrogate fits"))
        fields["projected features"] += fields.pop("per-sample gradients") + fields.pop("surrogate fits")
    elif est.method in ("exact", "scratch"):
        stage_parts["stacked models"] = stacked(min(est.exact_batch, est.num_subsets))
        fields["stacked models"] = (*cost.size_fields, "estimation.exact_batch") + data_fields
    elif est.method == "tag_lookahead":
        stage_parts["lookahead steps"] = 3 * 4 * min(64, T) * P
        fields["lookahead steps"] = model_fields
    elif est.method == "gradient_cosine":
        stage_parts["task gradients"] = 8 * T * P + 4 * 2 * min(64, T) * R * (width_sum + T)
        fields["task gradients"] = model_fields
    if manifest.grouping.selection == "outcome":
        stage_parts["group models"] = stacked(min(est.exact_batch, T)) + features_kept
        fields["group models"] = (*cost.size_fields, "estimation.exact_batch") + data_fields
    stage_parts["base training"] = train
    fields["base training"] = model_fields + (("training.mtl_method",) if training.mtl_method != "equal" else ()) \
        + (("estimation.checkpoint",) if kept_states else ())
    stage, stage_bytes = max(stage_parts.items(), key=lambda kv: kv[1])
    if load >= kept + stage_bytes:
        parts["data"] = load
        fields["data"] = data_fields
    else:
        parts["data"] = kept
        fields["data"] = data_fields
        parts[stage] = stage_bytes
    return MemoryEstimate(sum(parts.values()), parts, fields)



# -- a job's time: a lower bound, to refuse what could not finish within the server's limit ---------------

FLOPS = 1e13  # floating-point operations per second a worker reaches at best (a GPU's; a CPU's are far fewer)
STEP_SECONDS = 1e-4  # per optimizer step at least (Python and kernel-launch overhead of a step)


@dataclass
class TimeEstimate:
    seconds: float
    parts: dict[str, float] = field(default_factory=dict)
    fields: dict[str, tuple[str, ...]] = field(default_factory=dict)


def mlp_seconds(manifest: Manifest, shape: DatasetShape) -> TimeEstimate:
    return layered_seconds(manifest, shape, mlp_cost(manifest, shape))


def sign_seconds(manifest: Manifest, shape: DatasetShape) -> TimeEstimate:
    return layered_seconds(manifest, shape, sign_cost(manifest, shape))


def layered_seconds(manifest: Manifest, shape: DatasetShape, cost: ModelCost) -> TimeEstimate:
    """How long a job whose model ``cost`` describes takes at least: its floating-point work (6 multiply-adds
    of a row's forward pass for a training step, 2 for a forward pass) at FLOPS and its optimizer steps at
    STEP_SECONDS (see :func:`job_seconds`)."""
    T = max(shape.tasks, 1)
    model, training = manifest.model, manifest.training
    P, work = cost.params, cost.work  # work: multiply-adds of one row's forward pass (an MLP's: its parameters)
    per_row = 6 * work * (T if training.mtl_method != "equal" else 1) + 2 * work  # a step, and the validation pass
    if model.task_norm:
        per_row *= T
    return job_seconds(manifest, shape, per_row, 6 * work + 2 * P * manifest.estimation.projection_dim,
                       6 * work * T, cost.size_fields, cost.hops)


def job_seconds(manifest: Manifest, shape: DatasetShape, per_row: float, per_pair: float, task_row: float,
                model_fields: tuple[str, ...], hops: int = 0) -> TimeEstimate:
    """How long a job takes at least, from its model's floating-point work per row of a training epoch
    (``per_row``: a step and the validation pass), per projected per-sample gradient (``per_pair``) and per
    row of every task's gradient (``task_row``: tag_lookahead, gradient_cosine),
    at FLOPS, and its optimizer steps at STEP_SECONDS, over the epochs every model trains at least
    (early stopping ends training after ``training.patience`` epochs without a better validation loss, at
    ``training.epochs`` at the latest). Only a job that could not finish within the limit even so is
    refused; the worker stops the others when they reach it."""
    R, T = shape.rows, max(shape.tasks, 1)
    training, est, grouping = manifest.training, manifest.estimation, manifest.grouping
    epochs, batch = min(training.epochs, training.patience), min(training.batch_size, max(R, 1))

    def training_seconds(rows: float, models: float) -> float:
        steps = models * epochs * math.ceil(rows / batch)
        return models * epochs * rows * per_row / FLOPS + steps * STEP_SECONDS

    subset_rows = min(R, shape.pairs * min(est.subset_size, T) / T)
    parts = {"base training": training_seconds(R, 1)}
    fields = {"base training": ("training.epochs", "training.patience") + model_fields + shape.fields}
    if shape.edges:  # SIGN's propagation: hops sparse products over both directions of every edge
        parts["propagation"] = 2 * 2 * shape.edges * shape.features / (hops + 1) * hops / FLOPS
        fields["propagation"] = ("dataset.edges", "model.hops")
    if est.method in ("exact", "scratch"):
        parts["subset models"] = training_seconds(subset_rows, est.num_subsets)
        fields["subset models"] = ("estimation.num_subsets", "training.epochs", "training.patience") + shape.fields
    elif est.method == "grad_tag":
        d = est.projection_dim
        parts["projected gradients"] = shape.pairs * per_pair / FLOPS
        # l2_select validation: five fits per subset, the larger penalties in fewer iterations (2.3 times one fit's
        # time on the planted job)
        path = 2 if est.l2_select == "validation" else 1
        parts["surrogate fits"] = path * (est.num_subsets * 50 * 4 * subset_rows * d + d**3) / FLOPS
        fields["projected gradients"] = ("estimation.projection_dim",) + model_fields + shape.fields
        fields["surrogate fits"] = ("estimation.num_subsets", "estimation.projection_dim",
                                    "estimation.l2_select") + shape.fields
    elif est.method in ("tag_lookahead", "gradient_cosine"):
        parts["task gradients"] = epochs * R * task_row / (est.lookahead_every if est.method == "tag_lookahead"
                                                       else epochs) / FLOPS
        fields["task gradients"] = ("training.epochs",) + model_fields + shape.fields
    estimator_parts = [name for name in ("subset models", "projected gradients", "surrogate fits") if name in parts]
    if grouping.selection == "outcome" and grouping.crossfit and estimator_parts:
        # the estimator again on each half of the rows (affinity/crossfit.py): about its own time once more
        parts["cross-fitted affinity"] = sum(parts[name] for name in estimator_parts)
        fields["cross-fitted affinity"] = ("grouping.crossfit",) + fields[estimator_parts[0]]
    if grouping.selection == "outcome":
        # the check trains every distinct group of the candidates once per fold, on all folds but two; one
        # model for all and one per task are always distinct (a lower bound: the other candidates' groups
        # may repeat theirs)
        k = grouping.folds
        share = {"fold": (k - 2) / k, "share": (1 - manifest.dataset.val_fraction) - 1 / k}.get(
            grouping.check_stop, (1 - manifest.dataset.val_fraction) * (k - 1) / k)
        parts["group models"] = training_seconds(R * share, 2 * k * grouping.check_seeds)
        fields["group models"] = ("grouping.folds", "grouping.check_stop", "grouping.check_seeds",
                                  "grouping.candidates", "training.epochs", "training.patience") + shape.fields
        if grouping.agreement_crossfit == "all" and "outputs" in grouping.sources():
            # θ* again without each fold (affinity/agreement.py); with control only when an agreement split is chosen
            parts["base model per fold"] = training_seconds(R * share, k)
            fields["base model per fold"] = ("grouping.agreement_crossfit", "grouping.folds", "training.epochs",
                                             "training.patience") + shape.fields
        if grouping.agreement_consensus != "off" and "outputs" in grouping.sources():
            # θ* retrained from other seeds (affinity/agreement.py RESEEDS); without consensus only when the
            # agreement's groups are chosen
            parts["base models from other seeds"] = training_seconds(R, 2)
            fields["base models from other seeds"] = ("grouping.agreement_consensus", "training.epochs",
                                                      "training.patience") + model_fields + shape.fields
    return TimeEstimate(sum(parts.values()), parts, fields)
