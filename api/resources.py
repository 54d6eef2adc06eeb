"""A job's peak memory and least running time, estimated from its manifest and its dataset's shape before it
is queued, and the refusal (422 naming the fields) of a job past the server's limits.

Each model kind estimates its own jobs (``memory`` and ``seconds`` on affinity.kinds.ModelKind:
affinity/footprint.py for the MLP, affinity/transformer_footprint.py for the transformer with LoRA);
this module reads the dataset's shape (a built-in's from its params, a file's from its size and
columns) for the data kinds whose shape it can read (``sized``: tables, texts, images). A job whose kinds
cannot be estimated (a plug-in kind that declares no estimate, a data kind the server cannot size)
is refused unless the server allows unestimated kinds (TASK_AFFINITY_ALLOW_UNESTIMATED_KINDS); then
only the worker's memory and time limits bound it.
"""

from __future__ import annotations

import math
import re
from typing import Any

from affinity.data.table import DataError
from affinity.footprint import MB, DatasetShape, MemoryEstimate, TimeEstimate
from affinity.manifest import Manifest

__all__ = ["DatasetShape", "MemoryEstimate", "TimeEstimate", "estimate_memory", "estimate_seconds", "check_memory",
           "check_time", "check_estimable", "builtin_shape", "graph_shape", "images_shape", "path_shape", "table_shape"]


def check_estimable(manifest: Manifest, allow_unestimated: bool) -> bool:
    """Whether the job's kinds can be estimated; raise SubmissionError (422 naming the kind) when they cannot
    and the server does not allow unestimated kinds."""
    from affinity.kinds import data_kind, model_kind

    try:
        dkind, mkind = data_kind(manifest.dataset.kind), model_kind(manifest.model.kind)
    except DataError as exc:
        raise _problem(str(exc), "model.kind", manifest.model.kind) from None
    missing = [("dataset.kind", dkind.name, "the server cannot read the size of its datasets before the job runs")] \
        if not dkind.sized else []
    if mkind.memory is None or mkind.seconds is None:
        missing.append(("model.kind", mkind.name, "the kind declares no estimate of a job's memory and time "
                                                   "(memory and seconds on its ModelKind)"))
    if not missing or allow_unestimated:
        return not missing
    from api.submission import SubmissionError, problem

    from affinity.kinds import DATA_KINDS, MODEL_KINDS

    data = [k for k, v in DATA_KINDS.items() if v.sized]
    models = [k for k, v in MODEL_KINDS.items() if v.memory is not None and v.seconds is not None]
    raise SubmissionError([problem(field, value, f"{why}, so this server cannot check the job against its memory and "
                                   f"time limits before queueing it; use kinds it can estimate (dataset.kind "
                                   f"{', '.join(data)}; model.kind {', '.join(models)}), add the estimate to the "
                                   "plug-in, or ask the operator to set TASK_AFFINITY_ALLOW_UNESTIMATED_KINDS=true (the "
                                   "worker's limits then stop a job that grows too large)") for field, value, why in missing])


_FIELD = re.compile(r"^((?:model|dataset|estimation|training)\.[\w.]+)")


def _problem(message: str, default_field: str, value: Any):
    from api.submission import SubmissionError, problem

    first = message.splitlines()[0] if message else "cannot be estimated"
    match = _FIELD.match(first)
    field = match.group(1) if match else default_field
    return SubmissionError([{"field": field, "value": value if field == default_field else None,
                             "message": first if match else problem(field, value, first)["message"]}])


def estimate_memory(manifest: Manifest, shape: DatasetShape) -> MemoryEstimate:
    """The job's estimated peak memory (bytes), by part, from its model kind's estimate."""
    from affinity.kinds import model_kind

    return _call(model_kind(manifest.model.kind).memory, manifest, shape)


def estimate_seconds(manifest: Manifest, shape: DatasetShape) -> TimeEstimate:
    """A lower bound of the job's running time, by part, from its model kind's estimate."""
    from affinity.kinds import model_kind

    return _call(model_kind(manifest.model.kind).seconds, manifest, shape)


def _call(hook: Any, manifest: Manifest, shape: DatasetShape) -> Any:
    try:
        return hook(manifest, shape)
    except DataError as exc:  # e.g. model.pretrained not a model folder on this server
        raise _problem(str(exc), "model.kind", manifest.model.kind) from None
    except Exception as exc:  # noqa: BLE001 - a plug-in's estimate that fails: say so, never a 500
        raise _problem(f"the estimate of model.kind {manifest.model.kind!r} failed ({type(exc).__name__}: {exc}); "
                       "fix the plug-in", "model.kind", manifest.model.kind) from None


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
    "dataset.edges": "use a graph with fewer edges",
    "model.hops": "use fewer hops (each adds the node features once more to the model's input)",
    "dataset.params.regions": "use fewer regions",
    "dataset.params.communities_per_region": "use fewer communities per region",
    "dataset.params.nodes_per_region": "use fewer nodes per region",
    "estimation.projection_dim": "use a smaller projection_dim (200 is the default)",
    "estimation.exact_batch": "train fewer models at once (a smaller exact_batch)",
    "estimation.memory_mb": "give the gradient chunks and surrogate fits a smaller budget",
    "estimation.chunk_rows": "use fewer rows per gradient chunk",
    "estimation.block_params": "use smaller projection blocks",
    "estimation.subset_batch": "fit fewer subsets at once",
    "estimation.checkpoint": "linearize at the best state (checkpoint 1.0) so no checkpoints are kept",
    "training.mtl_method": "use mtl_method 'equal' (no per-task Jacobian)",
    "training.batch_size": "use a smaller batch_size",
    "model.max_length": "cut the texts shorter (a smaller max_length)",
    "model.pretrained": "use a smaller pretrained model",
    "model.lora_rank": "use a smaller lora_rank",
    "model.target_modules": "adapt fewer modules",
    "dataset.params.groups": "use fewer groups",
    "dataset.params.per_group": "use fewer tasks per group",
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
    "grouping.crossfit": "check on the rows the affinity was estimated from (grouping.crossfit: false)",
}


def _duration(seconds: float) -> str:
    if seconds >= 86400 * 365:
        return f"{seconds / (86400 * 365):.3g} years"
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


# -- the dataset's shape, from what the server knows before the job runs -----------------------------

DIGITS_ROWS, DIGITS_FEATURES = 1797, 64
# The built-in text's longest sentence in tokens: every slot's longest word with the built-in MiniLM's tokenizer,
# [CLS] and [SEP] ("two teal parrots, gloomy, kitchen at forenoon").
SENTENCE_TOKENS = 16
YEAST_ROWS, YEAST_FEATURES = 2417, 103


def builtin_shape(spec: Any, tasks: int, model: Any = None) -> DatasetShape | None:
    """A built-in's shape from its (already checked) params; None for a built-in this does not know."""
    params = spec.params
    if spec.source == "graph":
        from affinity.data.communities import community_params

        p = community_params(params)
        nodes = p["regions"] * p["nodes_per_region"]
        memberships = p["communities_per_region"] * p["community_fraction"]  # communities per node
        edges = math.ceil(nodes * (memberships * p["community_degree"] + p["region_degree"]
                                   + p["background_degree"]) / 2)
        fields = ("dataset.params.regions", "dataset.params.communities_per_region", "dataset.params.nodes_per_region",
                  "dataset.params.features")
        return DatasetShape(nodes, p["features"] * (_hops(model) + 1), tasks, tasks * p["labels_per_task"],
                            fields + ("model.hops",), _values(p, fields), edges=edges)
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
    if spec.source == "text":
        from affinity.data.sentences import sentence_params

        p = sentence_params(params)
        tasks = p["groups"] * p["per_group"] + p["unrelated"]
        rows = tasks * p["rows_per_task"]
        return DatasetShape(rows, 0, tasks, rows, _TEXT_FIELDS, _values(p, _TEXT_FIELDS), tokens=SENTENCE_TOKENS)
    fraction = params.get("label_fraction", 1.0)
    if spec.source == "digits":
        return DatasetShape(DIGITS_ROWS, DIGITS_FEATURES, tasks, math.ceil(DIGITS_ROWS * tasks * fraction),
                            image=(1, 8, 8) if "images" in _kind_sources(spec) else None)
    if spec.source == "yeast":
        return DatasetShape(YEAST_ROWS, YEAST_FEATURES, tasks, math.ceil(YEAST_ROWS * tasks * fraction))
    return None


_PLANTED_FIELDS = ("dataset.params.tasks", "dataset.params.rows_per_task", "dataset.params.features")
_TEXT_FIELDS = ("dataset.params.rows_per_task", "dataset.params.groups", "dataset.params.per_group")


def _kind_sources(spec: Any) -> tuple[str, ...]:
    from affinity.kinds import data_kind

    return data_kind(spec.kind).sources


def _hops(model: Any) -> int:
    """The hops of a graph propagation before the model (``model.hops``, a field of the kinds that propagate)."""
    if model is None:
        return 0
    from affinity.kinds import model_kind

    return int(model.hops) if "hops" in model_kind(model.kind).fields else 0


def edge_count(path: Any) -> int:
    """The edges of an edge-list file: an NPZ's 'edges' rows from its header, a Parquet file's rows from its
    metadata, a CSV's estimated rows."""
    from affinity.data.files import sniff_format

    fmt = sniff_format(path)
    if fmt == "npz":
        import zipfile

        import numpy as np

        with zipfile.ZipFile(path) as zf, zf.open("edges.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            return int(read(f)[0][0])
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    return csv_rows(path)


def graph_shape(spec: Any, model: Any, rows: int, columns: int, tasks: int, edges_path: Any) -> DatasetShape:
    """A graph's shape: its node table's (one column is the node ids) with the SIGN inputs as features, and the
    edges of its edge list (every (node, task) cell counted as labelled: an upper bound)."""
    features = len(spec.features) if spec.features is not None else max(1, columns - tasks - 1)
    shape = table_shape(spec, rows, columns, tasks, feature_columns=features * (_hops(model) + 1))
    try:
        shape.edges = edge_count(edges_path)
    except Exception:  # noqa: BLE001 - an unreadable edge list: the worker says why
        shape.edges = 0
    shape.fields += ("dataset.edges",) + (("model.hops",) if _hops(model) else ())
    return shape


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


def csv_rows(path: Any, block: int = 1 << 20) -> int:
    """At most how many rows a CSV file has: its line breaks, counted in blocks (the server does not parse a
    data-root file before the job runs). A quoted text's own line breaks count too, so it errs high; an
    estimate from the first lines' mean length would be fooled by a long first text."""
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        for block_bytes in iter(lambda: f.read(block), b""):
            # a line ends at \n, \r\n or a lone \r (pandas reads all three; a CR-only file counted 0 rows)
            lines += block_bytes.count(b"\n") + block_bytes.count(b"\r") - block_bytes.count(b"\r\n")
            if last == b"\r" and block_bytes[:1] == b"\n":  # a \r\n split between two blocks
                lines -= 1
            last = block_bytes[-1:]
    return max(0, lines + (last not in (b"\n", b"\r")) - 1)


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
            header = (f.readline(1 << 20).splitlines() or [b""])[0]  # the first line, whatever its line break
        return table_shape(spec, csv_rows(path), header.count(b",") + 1, tasks)
    except Exception:  # noqa: BLE001 - any unreadable file: the worker reports it
        return None
