"""A job's peak memory, estimated from its manifest and its dataset's shape before it is queued.

The estimate follows what the engine allocates (affinity/pipeline.py and the stages it calls), in
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
from dataclasses import dataclass, field
from typing import Any

from affinity.manifest import Manifest

MB = 2**20
PROCESS_BYTES = 600 * MB  # measured: ~390 MB after the imports, ~545 MB peak for the smallest job
FEATURE_COPIES = 5.5  # projected features: result, per-task blocks, packs (padded), rotated packs, Hessian temporaries
STACKED_COPY_PARAMS = 7  # per stacked model: parameters, gradients, m, v, best state, stacking and vmap temporaries
EVAL_ROWS = 8192  # evaluate_losses' batch of rows
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
    """What the estimates need of a model: parameters (all, shared), activation floats of one row through one
    task path (the MLP's summed widths), work of one row's forward pass in multiply-adds (an MLP's: its
    parameters), and the rows of a no-grad evaluation batch."""

    params: int
    shared: int
    activations: int
    work: int
    eval_rows: int = EVAL_ROWS


def _size_fields(manifest: Manifest) -> tuple[str, ...]:
    """The model fields that set its size (for messages)."""
    return ("model.arch", "model.channels") if manifest.model.kind == "cnn" else ("model.hidden",)


def model_cost(manifest: Manifest, shape: DatasetShape) -> ModelCost:
    """The manifest's model on the dataset's shape: a cnn on images (api/image_resources.py), else the MLP."""
    model = manifest.model
    if model.kind == "cnn":
        if shape.image is None:
            raise _refusal(manifest, shape, ["dataset.kind"], "model.kind 'cnn' takes images but the dataset holds a "
                           "table", {"dataset.kind": "set dataset.kind to 'images' with an images dataset"})
        from api.image_resources import conv_cost

        c = conv_cost(model, shape.image, max(shape.tasks, 1))
        return ModelCost(c.params, c.shared, c.activations, c.macs, c.eval_rows)
    P, P_shared = model_size(shape.features, list(model.hidden), shape.tasks, model.task_norm)
    return ModelCost(P, P_shared, sum(model.hidden), P)


def checkpoint_count(epochs: int) -> int:
    """len(affinity.training.checkpoint_epochs(epochs)), without importing torch here."""
    n, e = 0, 1.0
    while e <= epochs:
        n += 1
        e = max(e * 1.4, e + 1)
    return n


def _selected_parameters(manifest: Manifest, shape: DatasetShape, total: int, shared: int) -> int:
    est, hidden = manifest.estimation, manifest.model.hidden
    if est.params == "all":
        return total
    if est.params == "encoder":
        return shared
    if manifest.model.kind == "cnn":  # the last layer is the heads and per-task norms; more: an upper bound
        return total - shared if est.last_layers == 1 else total
    widths = [shape.features, *hidden]
    layers = [(a + 1) * b for a, b in zip(widths[:-1], widths[1:])]
    heads = shape.tasks * (widths[-1] + 1)
    k = min(est.last_layers - 1, len(layers))
    return heads + sum(layers[len(layers) - k:]) if k > 0 else heads


def estimate_memory(manifest: Manifest, shape: DatasetShape) -> MemoryEstimate:
    """The job's estimated peak memory (bytes), by part (see the module's docstring)."""
    R, F, T = shape.rows, shape.features, shape.tasks
    model, training, est = manifest.model, manifest.training, manifest.estimation
    cost = model_cost(manifest, shape)
    width_sum = cost.activations  # activation floats of one row (one task path)
    P, P_shared = cost.params, cost.shared
    pairs = math.ceil(shape.pairs * (1.0 - manifest.dataset.test_fraction))
    data_fields = shape.fields
    model_fields = _size_fields(manifest) + data_fields

    load = 36 * R * F + 17 * R * T  # raw float64 table, float64 copy and temporaries, float32 result, masks
    kept = 4 * R * F + 17 * R * T + 32 * pairs  # float32 X and Y, label tensors, masks, pair indices

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
        p = max(1, _selected_parameters(manifest, shape, P, P_shared))
        budget = est.memory_mb * MB
        chunk_rows = min(est.chunk_rows, max(1, budget // (12 * p)))
        gradients = 12 * p * chunk_rows + 4 * chunk_rows * (F + width_sum)
        low = est.projection_precision == "bfloat16"
        held = p * d * (6 if low else 4)
        projection = held if held <= budget // 2 else 2 * min(est.block_params, p) * d * (6 if low else 4)
        stage_parts["per-sample gradients"] = gradients + projection
        fields["per-sample gradients"] = ("estimation.memory_mb", "estimation.chunk_rows", *_size_fields(manifest),
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
        fields["stacked models"] = (*_size_fields(manifest), "estimation.exact_batch") + data_fields
    elif est.method == "tag_lookahead":
        stage_parts["lookahead steps"] = 3 * 4 * min(64, T) * P
        fields["lookahead steps"] = model_fields
    elif est.method == "gradient_cosine":
        stage_parts["task gradients"] = 8 * T * P + 4 * 2 * min(64, T) * R * (width_sum + T)
        fields["task gradients"] = model_fields
    if manifest.grouping.selection == "outcome":
        stage_parts["group models"] = stacked(min(est.exact_batch, T)) + features_kept
        fields["group models"] = (*_size_fields(manifest), "estimation.exact_batch") + data_fields
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


def check_memory(manifest: Manifest, shape: DatasetShape, limit_mb: float) -> MemoryEstimate:
    """The estimate; raise SubmissionError (422) naming the fields of the parts that need the most when it
    exceeds ``limit_mb`` (TASK_AFFINITY_WORKER_MEMORY_MB)."""
    estimate = estimate_memory(manifest, shape)
    if estimate.total <= limit_mb * MB:
        return estimate
    parts = ", ".join(f"{name} {_size(b)}" for name, b in estimate.biggest())
    why = (f"the job needs an estimated {_size(estimate.total)} of memory ({parts}), more than this server's "
           f"limit of {_size(limit_mb * MB)} per job (TASK_AFFINITY_WORKER_MEMORY_MB)")
    fields = [f for name, _ in estimate.biggest(2) for f in estimate.fields.get(name, ())]
    raise _refusal(manifest, shape, fields, why, FIXES)


def _refusal(manifest: Manifest, shape: DatasetShape, fields: list[str], why: str, fixes: dict[str, str]):
    """The 422 naming each of ``fields`` (once, in order) with its value, the reason and its fix."""
    from api.submission import SubmissionError, problem

    problems = [problem(f, shape.values[f] if f in shape.values else _value(manifest, f),
                        f"{why}; {fixes.get(f, 'lower it')}") for f in dict.fromkeys(fields)]
    return SubmissionError(problems or [problem("manifest", None, why)])


FIXES = {
    "model.hidden": "use fewer or narrower layers",
    "model.arch": "use arch 'small' (ResNet-18 has 11 million parameters)",
    "model.channels": "use fewer or narrower conv blocks",
    "dataset.params.rows_per_task": "use fewer rows per task",
    "dataset.params.tasks": "use fewer tasks",
    "dataset.params.features": "use fewer features",
    "dataset.source": "use a smaller dataset (fewer rows, features or tasks)",
    "dataset.tasks": "use fewer tasks",
    "dataset.features": "use fewer feature columns",
    "estimation.projection_dim": "use a smaller projection_dim (200 is the default)",
    "estimation.exact_batch": "train fewer models at once (a smaller exact_batch)",
    "estimation.memory_mb": "give the gradient chunks and surrogate fits a smaller budget",
    "estimation.chunk_rows": "use fewer rows per gradient chunk",
    "estimation.block_params": "use smaller projection blocks",
    "estimation.subset_batch": "fit fewer subsets at once",
    "estimation.checkpoint": "linearize at the best state (checkpoint 1.0) so no checkpoints are kept",
    "training.mtl_method": "use mtl_method 'equal' (no per-task Jacobian)",
}


def _value(manifest: Manifest, path: str) -> Any:
    node: Any = manifest.model_dump(mode="json")
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{math.ceil(n / MB)} MB"


# -- a job's time: a lower bound, to refuse what could not finish within the server's limit ---------------

FLOPS = 1e13  # floating-point operations per second a worker reaches at best (a GPU's; a CPU's are far fewer)
STEP_SECONDS = 1e-4  # per optimizer step at least (Python and kernel-launch overhead of a step)


@dataclass
class TimeEstimate:
    seconds: float
    parts: dict[str, float] = field(default_factory=dict)
    fields: dict[str, tuple[str, ...]] = field(default_factory=dict)


def estimate_seconds(manifest: Manifest, shape: DatasetShape) -> TimeEstimate:
    """How long the job takes at least: its floating-point work (6 per parameter and row for a training
    step, 2 for a forward pass) at FLOPS and its optimizer steps at STEP_SECONDS, over the epochs every
    model trains at least (early stopping ends training after ``training.patience`` epochs without a
    better validation loss, at ``training.epochs`` at the latest). Only a job that could not finish
    within the limit even so is refused; the worker stops the others when they reach it."""
    R, T = shape.rows, max(shape.tasks, 1)
    model, training, est, grouping = manifest.model, manifest.training, manifest.estimation, manifest.grouping
    cost = model_cost(manifest, shape)
    P, work = cost.params, cost.work  # work: multiply-adds of one row's forward pass (an MLP's: its parameters)
    per_row = 6 * work * (T if training.mtl_method != "equal" else 1) + 2 * work  # a step, and the validation pass
    if model.task_norm:
        per_row *= T
    epochs, batch = min(training.epochs, training.patience), min(training.batch_size, max(R, 1))

    def training_seconds(rows: float, models: float) -> float:
        steps = models * epochs * math.ceil(rows / batch)
        return models * epochs * rows * per_row / FLOPS + steps * STEP_SECONDS

    subset_rows = min(R, shape.pairs * min(est.subset_size, T) / T)
    parts = {"base training": training_seconds(R, 1)}
    fields = {"base training": ("training.epochs", "training.patience", *_size_fields(manifest)) + shape.fields}
    if est.method in ("exact", "scratch"):
        parts["subset models"] = training_seconds(subset_rows, est.num_subsets)
        fields["subset models"] = ("estimation.num_subsets", "training.epochs", "training.patience") + shape.fields
    elif est.method == "grad_tag":
        d = est.projection_dim
        pairs = shape.pairs
        parts["projected gradients"] = pairs * (6 * work + 2 * P * d) / FLOPS
        parts["surrogate fits"] = (est.num_subsets * 50 * 4 * subset_rows * d + d**3) / FLOPS
        fields["projected gradients"] = ("estimation.projection_dim", *_size_fields(manifest)) + shape.fields
        fields["surrogate fits"] = ("estimation.num_subsets", "estimation.projection_dim") + shape.fields
    elif est.method in ("tag_lookahead", "gradient_cosine"):
        parts["task gradients"] = epochs * R * 6 * work * T / (est.lookahead_every if est.method == "tag_lookahead"
                                                           else epochs) / FLOPS
        fields["task gradients"] = ("training.epochs", *_size_fields(manifest)) + shape.fields
    if grouping.selection == "outcome":
        # the check trains every distinct group of the candidates once per fold, on all folds but two; one
        # model for all and one per task are always distinct (a lower bound: the other candidates' groups
        # may repeat theirs)
        k = grouping.folds
        parts["group models"] = training_seconds(R * (k - 2) / k, 2 * k * grouping.check_seeds)
        fields["group models"] = ("grouping.folds", "grouping.check_seeds", "grouping.candidates", "training.epochs",
                                  "training.patience") + shape.fields
    return TimeEstimate(sum(parts.values()), parts, fields)


def check_time(manifest: Manifest, shape: DatasetShape, limit_hours: float) -> TimeEstimate:
    """The time estimate; SubmissionError (422) naming the fields of its biggest part when even this lower
    bound exceeds ``limit_hours`` (TASK_AFFINITY_MAX_JOB_HOURS)."""
    estimate = estimate_seconds(manifest, shape)
    if estimate.seconds <= limit_hours * 3600:
        return estimate
    name, seconds = max(estimate.parts.items(), key=lambda kv: kv[1])
    why = (f"the job would run for at least {_duration(estimate.seconds)} ({name} alone {_duration(seconds)}), longer "
           f"than this server's limit of {limit_hours:g} h per job (TASK_AFFINITY_MAX_JOB_HOURS)")
    raise _refusal(manifest, shape, list(estimate.fields[name]), why, {**FIXES, **TIME_FIXES})


TIME_FIXES = {
    "training.epochs": "train for fewer epochs",
    "training.patience": "stop earlier: fewer epochs without a better validation loss",
    "estimation.num_subsets": "sample fewer subsets",
    "grouping.candidates": "try fewer candidate groupings, or grouping.selection 'affinity'",
    "grouping.folds": "check the candidate groupings on fewer folds (at least 3)",
    "grouping.check_seeds": "train the check's models with fewer seeds",
}


def _duration(seconds: float) -> str:
    if seconds >= 86400 * 365:
        return f"{seconds / (86400 * 365):.3g} years"
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


# -- the dataset's shape, from what the server knows before the job runs -----------------------------

DIGITS_ROWS, DIGITS_FEATURES = 1797, 64
YEAST_ROWS, YEAST_FEATURES = 2417, 103


def builtin_shape(spec: Any, tasks: int) -> DatasetShape | None:
    """A built-in's shape from its (already checked) params; None for a built-in this does not know."""
    params = spec.params
    if spec.source == "planted":
        from affinity.data.planted import planted_params

        p = planted_params(params)
        rows = p["tasks"] * p["rows_per_task"]
        return DatasetShape(rows, p["features"], p["tasks"], rows, _PLANTED_FIELDS, _values(p, _PLANTED_FIELDS))
    if spec.source == "synthetic":
        from affinity.data.synthetic import synthetic_params

        p = synthetic_params(params)
        shared = p["mechanism"] == "shared_rows"
        rows = p["rows_per_task"] if shared else p["tasks"] * p["rows_per_task"]
        return DatasetShape(rows, p["features"], p["tasks"], rows * p["tasks"] if shared else rows,
                            _PLANTED_FIELDS, _values(p, _PLANTED_FIELDS))
    fraction = params.get("label_fraction", 1.0)
    if spec.source == "digits":
        return DatasetShape(DIGITS_ROWS, DIGITS_FEATURES, tasks, math.ceil(DIGITS_ROWS * tasks * fraction),
                            image=(1, 8, 8) if spec.kind == "images" else None)
    if spec.source == "yeast":
        return DatasetShape(YEAST_ROWS, YEAST_FEATURES, tasks, math.ceil(YEAST_ROWS * tasks * fraction))
    return None


_PLANTED_FIELDS = ("dataset.params.tasks", "dataset.params.rows_per_task", "dataset.params.features")


def _values(p: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {f: p[f.rsplit(".", 1)[1]] for f in fields}


def table_shape(spec: Any, rows: int, columns: int, tasks: int, feature_columns: int | None = None) -> DatasetShape:
    """A table's shape from its row and column counts: the features are the columns the manifest lists, or
    every column that is not a task; every (row, task) cell counts as labelled (an upper bound)."""
    if feature_columns is None:
        feature_columns = len(spec.features) if spec.features is not None else max(1, columns - tasks)
    fields = ("dataset.source",) + (("dataset.tasks",) if spec.tasks is not None else ()) \
        + (("dataset.features",) if spec.features is not None else ())
    return DatasetShape(rows, feature_columns, tasks, rows * tasks, fields,
                        {"dataset.tasks": len(spec.tasks) if spec.tasks is not None else None,
                         "dataset.features": len(spec.features) if spec.features is not None else None})


def csv_rows(path: Any, sample: int = 1 << 16) -> int:
    """About how many rows a CSV file has: counted when it is short, else its size over the mean length
    of its first lines (the server does not parse a data-root file before the job runs)."""
    import os

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(sample)
    lines = [ln for ln in head.splitlines() if ln.strip()]
    if size <= len(head):
        return max(0, len(lines) - 1)
    return max(0, math.ceil(size / (len(head) / max(1, len(lines)))) - 1)


def images_shape(spec: Any, path: Any, tasks: int) -> DatasetShape:
    """An images NPZ's shape from its array headers: rows, pixels, tasks (every label counted)."""
    from api.uploads import image_shape, npz_members

    members = npz_members(path)
    image = image_shape(members)
    rows = members["images"].shape[0]
    return DatasetShape(rows, math.prod(image), tasks, rows * tasks, image=tuple(image))


def path_shape(spec: Any, path: Any, tasks: int | None) -> DatasetShape | None:
    """The shape of a data-root file: an NPZ's from its array headers, a Parquet file's from its metadata, a
    CSV's header and estimated rows; None when the file cannot be read this way (the worker says why)."""
    from affinity.data.files import sniff_format

    try:
        fmt = sniff_format(path)
        if fmt == "npz":
            from api.uploads import npz_members, npz_tasks

            members = npz_members(path)
            if "images" in members:
                return images_shape(spec, path, tasks) if tasks is not None else None
            rows, features = members["X"].shape
            return table_shape(spec, rows, features + npz_tasks(members["Y"].shape), npz_tasks(members["Y"].shape),
                               feature_columns=features)
        if tasks is None:
            return None
        if fmt == "parquet":
            import pyarrow.parquet as pq

            md = pq.ParquetFile(path).metadata
            return table_shape(spec, md.num_rows, md.num_columns, tasks)
        with open(path, "rb") as f:
            header = f.readline(1 << 20)
        return table_shape(spec, csv_rows(path), header.count(b",") + 1, tasks)
    except Exception:  # noqa: BLE001 - any unreadable file: the worker reports it
        return None
