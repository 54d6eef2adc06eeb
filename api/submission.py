"""Checking a submitted manifest before it is queued: validity, dataset source, server limits.

A dataset source is a built-in name, the id of an uploaded dataset of the same owner, or a path
inside the server's data root (anything resolving outside it, symlinks included, is refused).
"""

from __future__ import annotations

import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from affinity.data import BUILTINS, DataError
from affinity.data.files import sniff_format
from affinity.data.planted import planted_params
from affinity.manifest import BUILTIN_TRANSFORMER, GRAPH_BUILTINS, Manifest, validation_problems
from affinity.messages import first_line
from api.problems import MAX_NESTING
from api.resources import (DatasetShape, builtin_shape, check_estimable, check_memory, check_time, graph_shape,
                           images_shape, path_shape, table_shape)
from api.settings import Settings
from api.store import JobStore
from api.uploads import BadUpload, npz_members, npz_tasks


class SubmissionError(Exception):
    """A manifest the server will not queue; ``problems`` name each bad field."""

    def __init__(self, problems: list[dict[str, Any]], status: int = 422) -> None:
        super().__init__("; ".join(p["message"] for p in problems))
        self.problems = problems
        self.status = status


def problem(field: str, value: Any, message: str) -> dict[str, Any]:
    return {"field": field, "value": value, "message": f"{field}: {message}"}


@dataclass(frozen=True)
class Checked:
    manifest: Manifest
    dataset_id: str | None


@dataclass(frozen=True)
class TaskCount:
    """How many tasks a job's dataset has, and the field that decides it (for messages)."""

    n: int
    field: str
    # False for a table file in the data root: the server does not open it before the job runs, so
    # a single task there is still found by the worker (tests/test_api.py submits such jobs).
    refuse_single: bool = True


def check_manifest(body: Any, owner: str, store: JobStore, settings: Settings) -> Checked:
    if not isinstance(body, dict):
        raise SubmissionError([problem("manifest", None, "expected a JSON object with at least a 'dataset' section")])
    raw = raw_problems(body)
    if raw:
        raise SubmissionError(raw)
    try:
        manifest = Manifest.model_validate(body)
    except ValidationError as err:
        raise SubmissionError(validation_problems(err)) from None
    _check_seeds(manifest)
    dataset_id = None
    spec = manifest.dataset
    source = spec.source
    shape: DatasetShape | None = None
    if source in BUILTINS or source in GRAPH_BUILTINS:
        if spec.edges is not None:  # an edge list is read with a node table only, never beside a built-in
            raise SubmissionError([problem("dataset.edges", spec.edges, f"a built-in dataset ({source}) has no edge "
                                           "list; remove it, or give a node table as dataset.source")])
        tasks = builtin_tasks(spec)
        shape = builtin_shape(spec, tasks.n, manifest.model) if tasks is not None else None
    elif _made_from_params(spec):  # no file to check
        tasks = None
    else:
        if spec.params:
            raise SubmissionError([problem("dataset.params", spec.params, "applies to built-in datasets only "
                                           f"({', '.join(BUILTINS)}); remove it for a file source")])
        if source.startswith("ds_"):
            ds = store.get_dataset(owner, source)
            if ds is None:
                raise SubmissionError([problem("dataset.source", source, "no uploaded dataset with this id; "
                                               "upload one with POST /v1/datasets and use the id it returns")])
            dataset_id = ds.id
            _check_kind_reads(spec, ds.format)
            npz_nodes = ds.format == "graph" and Path(ds.path).suffix == ".npz"  # arrays, not named columns
            _check_columns(spec, ds.columns, "npz" if npz_nodes else ds.format)
            if ds.format == "images":
                tasks = _npz_tasks(spec, sum(c.startswith("task_") for c in ds.columns))
                shape = images_shape(spec, Path(ds.path), tasks.n)
            elif ds.format == "graph":
                edges = upload_edges(ds.path)
                _check_edge_list(spec, Path(ds.path), edges, values=True)  # an upload: no larger than the limit
                if npz_nodes:  # its tasks are the columns of its Y
                    tasks = _npz_tasks(spec, sum(c.startswith("task_") for c in ds.columns))
                else:
                    tasks = TaskCount(len(spec.tasks or ()), "dataset.tasks")
                shape = graph_shape(spec, manifest.model, ds.rows, len(ds.columns), tasks.n, edges)
            elif ds.format == "npz":
                y_columns = sum(c.startswith("task_") for c in ds.columns)
                tasks = _npz_tasks(spec, y_columns)
                shape = table_shape(spec, ds.rows, len(ds.columns), y_columns,
                                    feature_columns=len(ds.columns) - y_columns)
            else:
                tasks = TaskCount(len(spec.tasks or ()), "dataset.tasks")
                shape = table_shape(spec, ds.rows, len(ds.columns), tasks.n)
        else:
            path = resolve_data_path(source, settings)
            tasks = _path_tasks(spec, path)
            shape = path_shape(spec, path, tasks.n if tasks is not None else None)
            if "graph" in _data_kind(spec).sources and spec.edges is None:
                raise SubmissionError([problem("dataset.edges", None, "is required for a graph read from files; give "
                                               "the path of the edge list (dataset.source is the node table)")])
            if spec.edges is not None:  # a graph's edge list: inside the data root too
                edges = resolve_data_path(spec.edges, settings, "dataset.edges")
                _check_edge_list(spec, path, edges,
                                 values=path.stat().st_size + edges.stat().st_size <= settings.upload_limit_bytes)
                shape = graph_shape(spec, manifest.model, shape.rows, shape.features + tasks.n, tasks.n, edges) \
                    if shape is not None and tasks is not None else None
    # images' label table, a cnn's weights, a transformer's folder: inside the data root. The estimates read
    # the resolved paths; the stored manifest keeps what the user wrote (the worker resolves it again).
    resolved = _resolve_paths(manifest.model_copy(deep=True), settings)
    _check_limits(manifest, tasks, settings)
    check_compute(manifest, settings)
    estimable = check_estimable(manifest, settings.allow_unestimated_kinds)
    if shape is not None and estimable:
        check_memory(resolved, shape, settings.worker_memory_mb)
        check_time(resolved, shape, settings.max_job_hours)
    return Checked(manifest, dataset_id)


# -- the raw body, before the schema sees it -------------------------------------------------------

MAX_PROBLEMS = 20
INT_LIMIT = 2**63 - 1  # every whole number the engine takes is a 64-bit integer
SEED_LIMIT = 2**32 - 1  # seeds go to NumPy, PyTorch and scikit-learn: the range all of them take
SEED_RANGE = f"is not a usable seed; give a whole number from 0 to {SEED_LIMIT}"


def _path(parent: str, key: Any) -> str:
    return f"{parent}[{key}]" if isinstance(key, int) else (f"{parent}.{key}" if parent else str(key))


def raw_problems(body: Any) -> list[dict[str, Any]]:
    """What no manifest field may hold, wherever it is (``dataset.params`` included): nesting deeper
    than MAX_NESTING, NaN or ±Infinity (not JSON; a stored job must stay standard JSON), a NUL
    character (not a file name, not storable in PostgreSQL), a whole number past 64 bits."""
    found: list[dict[str, Any]] = []
    stack: list[tuple[str, Any, int]] = [("", body, 0)]
    while stack and len(found) < MAX_PROBLEMS:
        path, value, depth = stack.pop()
        field = path or "manifest"
        if isinstance(value, (dict, list)):
            if depth >= MAX_NESTING:
                found.append(problem(field, None, f"nests more than {MAX_NESTING} levels of arrays or objects; "
                                                  "a manifest needs far fewer"))
                continue
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in reversed(list(items)):
                if isinstance(key, str) and "\x00" in key:
                    found.append(problem(_path(path, key.replace("\x00", "\\0")), None,
                                         "a key contains a NUL character; remove it"))
                    continue
                stack.append((_path(path, key), item, depth + 1))
        elif isinstance(value, float) and not math.isfinite(value):
            found.append(problem(field, value, "is not a finite number (NaN and Infinity are not JSON numbers); "
                                               "give a finite number"))
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_LIMIT:
            found.append(problem(field, str(value), SEED_RANGE if field.endswith("seed") else
                                 f"is too large; whole numbers in a manifest lie between -{INT_LIMIT} and {INT_LIMIT}"))
        elif isinstance(value, str) and "\x00" in value:
            found.append(problem(field, value.replace("\x00", "\\0"), "contains a NUL character; remove it"))
    return found


def _check_seeds(manifest: Manifest) -> None:
    """Every ``seed`` of the manifest (training.seed, grouping.seed, ...) within SEED_LIMIT."""
    problems = []
    stack: list[tuple[str, Any]] = [("", manifest.model_dump())]
    while stack:
        path, node = stack.pop()
        for key, value in node.items():
            field = _path(path, key)
            if isinstance(value, dict) and field != "dataset.params":  # built-ins' params: builtin_tasks
                stack.append((field, value))
            elif key == "seed" and isinstance(value, int) and not 0 <= value <= SEED_LIMIT:
                problems.append(problem(field, value, SEED_RANGE))
    if problems:
        raise SubmissionError(sorted(problems, key=lambda p: p["field"]))


# -- the dataset's task count ----------------------------------------------------------------------

_PARAM_FIELD = re.compile(r"dataset\.params\.(\w+)")


def builtin_tasks(spec: Any) -> TaskCount | None:
    """Check a built-in dataset's params with the dataset's own checks, now instead of in the worker,
    and count its tasks (None for a built-in this does not know: the worker checks it)."""
    params = spec.params
    seed = params.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= SEED_LIMIT:
        raise SubmissionError([problem("dataset.params.seed", seed, SEED_RANGE)])
    try:
        if spec.source == "planted":
            return TaskCount(planted_params(params)["tasks"], "dataset.params.tasks")
        if spec.source == "digits":
            fraction = params.get("label_fraction", 1.0)
            if not isinstance(fraction, (int, float)) or isinstance(fraction, bool):
                raise DataError(f"dataset.params.label_fraction={fraction!r} must be a number in (0, 1]")
            return TaskCount(BUILTINS["digits"](params).n_tasks, "dataset.source")
        if spec.source == "synthetic":
            from affinity.data.synthetic import synthetic_params

            return TaskCount(synthetic_params(params)["tasks"], "dataset.params.tasks")
        if spec.source == "text":
            from affinity.data.sentences import sentence_params

            p = sentence_params(params)
            return TaskCount(p["groups"] * p["per_group"] + p["unrelated"], "dataset.params.per_group")
        if spec.source == "graph":
            from affinity.data.communities import community_params

            p = community_params(params)
            return TaskCount(p["regions"] * p["communities_per_region"], "dataset.params.communities_per_region")
        if spec.source == "yeast":
            from affinity.data.real import LABELS, yeast_params

            yeast_params(params)
            return TaskCount(len(LABELS), "dataset.source")
    except (DataError, TypeError, ValueError) as exc:
        message = first_line(exc)
        match = _PARAM_FIELD.search(message)
        field = match.group(0) if match else "dataset.params"
        value = params.get(match.group(1)) if match else params
        raise SubmissionError([{"field": field, "value": value, "message": message}]) from None
    return None


def _npz_tasks(spec: Any, y_columns: int) -> TaskCount:
    if spec.tasks is not None and len(spec.tasks) != y_columns:
        raise SubmissionError([problem("dataset.tasks", len(spec.tasks), f"lists {len(spec.tasks)} tasks but the "
                                       f"dataset's Y has {y_columns} columns; give one entry per column of Y, "
                                       "or omit dataset.tasks")])
    return TaskCount(y_columns, "dataset.source")


def _path_tasks(spec: Any, path: Path) -> TaskCount | None:
    try:
        npz = sniff_format(path) == "npz"
    except (DataError, OSError):
        npz = False  # the worker says what is wrong with the file
    if npz:
        try:
            members = npz_members(path)
            if "Y" not in members:  # an images NPZ whose labels are a table (dataset.labels)
                if spec.tasks is None or spec.labels is None:
                    raise SubmissionError([problem("dataset.labels" if spec.labels is None else "dataset.tasks", None,
                                                   "is required for an images NPZ without 'Y': give the label table "
                                                   "(dataset.labels) and its task columns (dataset.tasks)")])
                return TaskCount(len(spec.tasks), "dataset.tasks")
            return _npz_tasks(spec, npz_tasks(members["Y"].shape))
        except (BadUpload, OSError, ValueError, zipfile.BadZipFile) as exc:
            raise SubmissionError([problem("dataset.source", spec.source, f"cannot be read as an NPZ dataset: "
                                           f"{first_line(exc)}")]) \
                from None
    if spec.tasks is None:
        if _data_kind(spec).named_columns:  # a CSV or Parquet file names its label columns nowhere else
            raise SubmissionError([problem("dataset.tasks", None, f"is required for dataset.kind {spec.kind!r} read "
                                           "from a CSV or Parquet file; list the label columns, e.g. \"tasks\": "
                                           "[\"label_a\", \"label_b\"]")])
        return None
    return TaskCount(len(spec.tasks), "dataset.tasks")


def resolve_data_path(source: str, settings: Settings, field: str = "dataset.source", folder: bool = False) -> Path:
    """The file a path source (or another path field: dataset.labels, dataset.edges, model.weights) names, which
    must lie inside the data root; with ``folder``, a folder there (model.pretrained)."""
    what = "folder" if folder else "file"
    if settings.data_root is None:
        raise SubmissionError([problem(field, source, "this server accepts no file paths (no data root "
                                       "is configured); upload the file with POST /v1/datasets and use its id, "
                                       "or use a built-in dataset (planted, digits)")])
    if "\x00" in source:
        raise SubmissionError([problem(field, source.replace("\x00", "\\0"),
                                       "contains a NUL character; give a path relative to the data root")])
    root = settings.data_root.resolve()
    candidate = Path(source)
    try:
        path = (candidate if candidate.is_absolute() else root / candidate).resolve()
        inside = path.is_relative_to(root)
        is_file = inside and (path.is_dir() if folder else path.is_file())
    except (OSError, RuntimeError, ValueError) as exc:
        # A name longer than the file system allows, a symbolic link loop, ...
        reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror
                  else "a symbolic link loop" if isinstance(exc, RuntimeError) else type(exc).__name__)
        raise SubmissionError([problem(field, source, f"is not a usable path in the server's data root "
                                       f"({reason}); give the path of a {what} inside it")]) from None
    if not inside:
        raise SubmissionError([problem(field, source, "resolves outside the server's data root; give a "
                                       "path relative to the data root")])
    if not is_file:
        raise SubmissionError([problem(field, source, f"no such {what} in the server's data root")])
    return path


def upload_edges(nodes_path: str) -> Path:
    """The edge list stored beside an uploaded graph's node table (api/routes/datasets.py)."""
    found = sorted(Path(nodes_path).parent.glob("edges.*"))
    if not found:
        raise ValueError(f"the uploaded graph's edge list is missing from {Path(nodes_path).parent}; upload it again")
    return found[0]


_DATA_FIELD = re.compile(r"^dataset\.\w+")


def _check_edge_list(spec: Any, nodes: Path, edges: Path, values: bool) -> None:
    """The edge list by the worker's own checks (affinity.data.graph), now rather than after the job was queued:
    dataset.edge_columns and dataset.edge_weight against its header (CSV, Parquet) or arrays (NPZ), and with
    ``values`` every edge (ids present and nodes of the node table, weights positive), read in chunks beside the
    node ids alone. ``values`` is False for data-root files larger than an upload may be: the worker checks those."""
    from affinity.data.graph import check_edge_list, edge_column_problems

    local = spec.model_copy(update={"source": str(nodes), "edges": str(edges)})
    try:
        problems = edge_column_problems(local, edges)
        if problems:
            raise SubmissionError([problem(field, name, message) for field, name, message in problems])
        if values:
            check_edge_list(local)
    except (DataError, OSError, zipfile.BadZipFile) as exc:
        message = first_line(exc)
        match = _DATA_FIELD.match(message)
        if match is None:
            raise SubmissionError([problem("dataset.edges", spec.edges, f"cannot read the edge list: {message}")]) \
                from None
        field = match.group(0)
        value = (spec.edges or edges.name) if field == "dataset.edges" else getattr(spec, field.split(".")[1], None)
        raise SubmissionError([{"field": field, "value": value, "message": message}]) from None


# What an uploaded dataset holds, by its format (api/uploads.py), and how to upload what a kind reads.
HOLDS = {"csv": "a CSV table", "parquet": "a Parquet table", "npz": "an NPZ of arrays X and Y",
         "images": "images (an NPZ of 'images' and 'Y')", "graph": "a graph (a node table and its edge list)"}
UPLOAD = {"csv": "upload a CSV or Parquet table", "parquet": "upload a CSV or Parquet table",
          "npz": "upload an NPZ of arrays X and Y", "images": "upload an NPZ of 'images' and 'Y'",
          "graph": "upload the node table and the edge list as the parts 'nodes' and 'edges' of one POST /v1/datasets"}


def _data_kind(spec: Any) -> Any:
    from affinity.kinds import data_kind

    try:
        return data_kind(spec.kind)
    except DataError as exc:  # a plug-in that fails to load
        raise SubmissionError([problem("dataset.kind", spec.kind, first_line(exc))]) from None


def _made_from_params(spec: Any) -> bool:
    """A plug-in data kind that makes its data from dataset.params (no ``sources``): dataset.source names no file
    (an uploaded dataset's id named as its source is still looked up, and refused by :func:`_check_kind_reads`)."""
    return not _data_kind(spec).sources and not spec.source.startswith("ds_")


def _readers(fmt: str) -> list[str]:
    """The data kinds (built-in, then installed plug-ins that load) whose sources include ``fmt``."""
    from affinity.kinds import data_kind, data_kind_names

    found = []
    for name in data_kind_names():
        try:
            if fmt in data_kind(name).sources:
                found.append(name)
        except DataError:
            continue
    return found


def _check_kind_reads(spec: Any, fmt: str) -> None:
    """The uploaded dataset is of a format its data kind reads (the kind's ``sources``). When the manifest names the
    kind, the upload is what is wrong; when the kind is the default, the kind is."""
    kind = _data_kind(spec)
    if fmt in kind.sources:
        if fmt == "graph" and spec.edges is not None:
            raise SubmissionError([problem("dataset.edges", spec.edges, f"the uploaded graph {spec.source} holds its "
                                           "edge list; remove dataset.edges")])
        return
    readers = _readers(fmt)
    reads = (" or ".join(dict.fromkeys(HOLDS[f] for f in kind.sources if f in HOLDS))
             or "no file (it makes its data from dataset.params)")
    instead = f"set dataset.kind to {' or '.join(repr(r) for r in readers)}" if readers else "no data kind reads it"
    how = "; ".join(dict.fromkeys(UPLOAD[f] for f in kind.sources if f in UPLOAD))
    if "kind" in spec.model_fields_set:
        raise SubmissionError([problem("dataset.source", spec.source, f"the uploaded dataset holds {HOLDS[fmt]}; "
                                       f"dataset.kind {kind.name!r} reads {reads}: "
                                       f"{how or 'give the source it names'}, or {instead}")])
    raise SubmissionError([problem("dataset.kind", spec.kind, f"the uploaded dataset {spec.source} holds "
                                   f"{HOLDS[fmt]}, which dataset.kind {kind.name!r} does not read; {instead}")])


def _check_columns(spec: Any, columns: list[str], fmt: str) -> None:
    """The label columns (dataset.tasks) and the input columns the data kind names (its ``columns`` fields) are
    columns of the uploaded table (an NPZ names none)."""
    if fmt in ("npz", "images"):
        return
    if spec.tasks is None:
        raise SubmissionError([problem("dataset.tasks", None, f"is required for dataset.kind {spec.kind!r}; list the "
                                       f"label columns (the dataset's columns are {columns[:20]})")])
    table = "the node table" if fmt == "graph" else "the dataset"
    problems = [problem(f"dataset.tasks[{i}].name", t.name, f"is not a column of {table}; its columns are "
                        f"{columns[:20]}") for i, t in enumerate(spec.tasks) if t.name not in columns]
    for field, many in _data_kind(spec).columns:
        value = getattr(spec, field, None)
        if value is None:
            continue
        named = [(f"dataset.{field}[{i}]", c) for i, c in enumerate(value)] if many else [(f"dataset.{field}", value)]
        problems += [problem(where, c, f"is not a column of {table}; its columns are {columns[:20]}")
                     for where, c in named if c not in columns]
    if problems:
        raise SubmissionError(problems)


def _check_limits(manifest: Manifest, tasks: TaskCount | None, settings: Settings) -> None:
    est = manifest.estimation
    if est.num_subsets > settings.max_subsets:
        raise SubmissionError([problem("estimation.num_subsets", est.num_subsets,
                                       f"exceeds this server's limit of {settings.max_subsets} subsets per job; "
                                       "lower it")])
    if tasks is None:
        return
    n = tasks.n
    if n > settings.max_tasks:
        raise SubmissionError([problem(tasks.field, n, f"{n} tasks exceed this server's limit of "
                                       f"{settings.max_tasks} tasks per job (TASK_AFFINITY_MAX_TASKS); split the "
                                       "tasks over several jobs")])
    if n < 2 and tasks.refuse_single:
        raise SubmissionError([problem(tasks.field, n, f"the dataset has {n} task; task affinity measures how "
                                       "tasks help each other, so a job needs at least 2 tasks")])
    k = manifest.grouping.k
    biggest = max(k) if isinstance(k, list) else k
    if isinstance(biggest, int) and biggest > n:
        raise SubmissionError([problem("grouping.k", k, f"asks for up to {biggest} groups but the dataset has {n} "
                                       f"tasks; give at most {n}, or 'auto'")])


def effective_backend(manifest: Manifest, settings: Settings) -> str:
    """Where the job's heavy stages run: the server's TASK_AFFINITY_COMPUTE_BACKEND, or the manifest's."""
    return settings.compute_backend if settings.compute_backend != "manifest" else manifest.compute.backend


def check_compute(manifest: Manifest, settings: Settings) -> None:
    """A manifest may name a Ray cluster only from the server's allow-list: a key holder must not make a
    worker connect to any host and port, nor run on another owner's cluster."""
    address = manifest.compute.address
    if address is None or effective_backend(manifest, settings) != "ray":
        return
    allowed = settings.allowed_ray_addresses
    if address.strip() in allowed:
        return
    if allowed:
        how = (f"is not a Ray cluster this server lets jobs use; use one of {allowed} "
               "(TASK_AFFINITY_RAY_ADDRESSES), or omit it for the server's default")
    else:
        how = ("names a Ray cluster, but this server lets no manifest choose one (TASK_AFFINITY_RAY_ADDRESSES is "
               "empty); omit compute.address to use the server's default, or ask the operator to allow the cluster")
    raise SubmissionError([problem("compute.address", address, how)])


def ray_address(manifest: Manifest, settings: Settings) -> str | None:
    """The cluster a worker connects to for a Ray job: the manifest's (allowed) address, else the server's
    TASK_AFFINITY_RAY_ADDRESS (None: Ray's own RAY_ADDRESS of the worker, else a local instance)."""
    try:
        check_compute(manifest, settings)  # again: the allow-list may have changed since the job was queued
    except SubmissionError as exc:
        raise ValueError(str(exc)) from None
    address = manifest.compute.address
    return address.strip() if address else settings.ray_address


def _path_fields(manifest: Manifest) -> list[tuple[str, str, bool]]:
    """The manifest's paths besides dataset.source that are set: (field, value, whether a folder). Files:
    dataset.labels, model.weights; a folder: model.pretrained unless it names the packaged model."""
    fields = [(f"{section}.{name}", getattr(getattr(manifest, section), name), False)
              for section, name in (("dataset", "labels"), ("model", "weights"))
              if getattr(getattr(manifest, section), name) is not None]
    if manifest.model.pretrained != BUILTIN_TRANSFORMER:
        fields.append(("model.pretrained", manifest.model.pretrained, True))
    return fields


def _resolve_paths(manifest: Manifest, settings: Settings) -> Manifest:
    """``manifest`` (changed in place) with its paths besides dataset.source resolved inside the data root."""
    for field, value, folder in _path_fields(manifest):
        section, name = field.split(".")
        setattr(getattr(manifest, section), name, str(resolve_data_path(value, settings, field, folder)))
    return manifest


def runnable_manifest(manifest_json: dict[str, Any], owner: str, store: JobStore, settings: Settings) -> Manifest:
    """The manifest a worker runs: the stored one with its source (and other paths) resolved to files."""
    manifest = Manifest.model_validate(manifest_json)
    try:
        _resolve_paths(manifest, settings)
    except SubmissionError as exc:
        raise ValueError(str(exc)) from None
    source = manifest.dataset.source
    if source in BUILTINS or source in GRAPH_BUILTINS:
        if manifest.dataset.edges is not None:
            raise ValueError("dataset.edges: a built-in dataset has no edge list; remove it")
        return manifest
    try:
        if _made_from_params(manifest.dataset):
            return manifest
    except SubmissionError as exc:
        raise ValueError(str(exc)) from None
    if source.startswith("ds_"):
        ds = store.get_dataset(owner, source)
        if ds is None:
            raise ValueError(f"dataset {source} was deleted after the job was submitted; upload it again")
        manifest.dataset.source = ds.path
        if ds.format == "graph":
            manifest.dataset.edges = str(upload_edges(ds.path))
        return manifest
    try:
        manifest.dataset.source = str(resolve_data_path(source, settings))
        if manifest.dataset.edges is not None:
            manifest.dataset.edges = str(resolve_data_path(manifest.dataset.edges, settings, "dataset.edges"))
    except SubmissionError as exc:
        raise ValueError(str(exc)) from None
    return manifest
