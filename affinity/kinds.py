"""The data and model kinds the stages accept, by the names a manifest uses.

A **data kind** (``dataset.kind``) reads a manifest's dataset section into a checked
:class:`~affinity.data.table.TaskTable` (inputs + per-task labels, NaN = not labelled); the split,
its checks and errors are common to every kind (affinity/data/split.py).

A **model kind** (``model.kind``) names the data kinds it takes, turns their raw inputs into the
tensor its module consumes (``inputs``: tables pass through, texts are tokenized once, a graph's node
features are propagated over its edges once), and builds
the module (``build``), which has the interface documented in affinity/models.py.

The stages call :func:`load_data` and :func:`make_model` and never look at a kind's name.

**Estimates.** The server refuses a manifest whose job would pass its memory or time limit before
queueing it (api/resources.py). It can do so when the data kind is ``sized`` (the server reads the
dataset's rows, columns and tasks from its file or a built-in's params: tables and texts) and the
model kind declares ``memory`` and ``seconds`` (its estimate of the job's peak memory and least
running time from the manifest and that :class:`~affinity.footprint.DatasetShape`). A job with any
other kind is refused at submit unless the server allows unestimated kinds
(TASK_AFFINITY_ALLOW_UNESTIMATED_KINDS): then only the worker's own memory and time limits bound it.

**Plug-ins.** An installed package adds kinds through the entry-point groups
``task_affinity.datasets`` (each entry a :class:`DataKind`) and ``task_affinity.models`` (each a
:class:`ModelKind`), used by their entry-point name in a manifest (``dataset.kind``,
``model.kind``; a plug-in model reads its settings from ``model.params``). Only installed
packages are loaded, by name, when a manifest names them: a manifest never names code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from affinity.data.table import DataError, SplitTable, TaskTable
from affinity.cnn_footprint import cnn_memory, cnn_seconds
from affinity.footprint import (DatasetShape, MemoryEstimate, TimeEstimate, mlp_memory, mlp_seconds, sign_memory,
                                sign_seconds)
from affinity.manifest import MODEL_FIELDS, DatasetSpec, Manifest, ModelSpec

if TYPE_CHECKING:  # the service validates manifests (data kinds) without loading torch
    from torch import nn


@dataclass(frozen=True)
class DataKind:
    """``read(dataset section) -> TaskTable``: inputs ``X`` (rows × features; or raw ``texts``) and labels ``Y``
    (rows × tasks, NaN = not labelled), task names and types. The common checks and split follow."""

    name: str
    read: Callable[[DatasetSpec], TaskTable]
    sized: bool = False  # the server reads its shape (rows, columns, tasks) from the file or built-in params
    # the dataset fields that name a file's input columns, each with whether it takes a list (the dashboard's form
    # offers them as column roles, next to the task columns; the service checks them against an upload's columns)
    columns: tuple[tuple[str, bool], ...] = ()
    # what dataset.source may hold, as the service tells files apart (api/uploads.py): "csv", "parquet" (tables with
    # named columns: dataset.tasks names the labels), "npz" (arrays X and Y), "images" (an NPZ of images and Y),
    # "graph" (a node table with its edge list). Empty: the kind makes its data from dataset.params (no file).
    sources: tuple[str, ...] = ("csv", "parquet")

    @property
    def named_columns(self) -> bool:
        """Whether its files name their label columns (CSV, Parquet, a graph's node table): dataset.tasks lists them."""
        return bool({"csv", "parquet", "graph"} & set(self.sources))


def _same(data: SplitTable, spec: ModelSpec) -> SplitTable:
    return data


@dataclass(frozen=True)
class ModelKind:
    """``build(model section, data, seed) -> nn.Module`` with the interface of affinity/models.py, for the data
    kinds in ``accepts``; ``inputs(data, model section)`` turns the data's raw inputs into the module's (default:
    as they are). ``memory(manifest, shape) -> MemoryEstimate`` and ``seconds(manifest, shape) -> TimeEstimate``
    (affinity/footprint.py) estimate a job before it runs; a kind without them is not estimated (see above)."""

    name: str
    accepts: tuple[str, ...]
    build: Callable[[ModelSpec, SplitTable, int], nn.Module]
    inputs: Callable[[SplitTable, ModelSpec], SplitTable] = _same
    memory: Callable[[Manifest, DatasetShape], MemoryEstimate] | None = None
    seconds: Callable[[Manifest, DatasetShape], TimeEstimate] | None = None
    fields: tuple[str, ...] = ()  # the model section's fields of this kind (a plug-in's settings are model.params)


def _read_table(spec: DatasetSpec) -> TaskTable:
    from affinity.data import read_table

    return read_table(spec)


def _read_text(spec: DatasetSpec) -> TaskTable:
    from affinity.data.text import read_text

    return read_text(spec)


def _read_images(spec: DatasetSpec) -> TaskTable:
    from affinity.data.images import read_images

    return read_images(spec)


def _build_cnn(spec: ModelSpec, data: SplitTable, seed: int) -> nn.Module:
    from affinity.cnn import build_cnn

    return build_cnn(spec, data, seed)


def _read_graph(spec: DatasetSpec) -> TaskTable:
    from affinity.data.graph import read_graph

    return read_graph(spec)


def _build_mlp(spec: ModelSpec, data: SplitTable, seed: int) -> nn.Module:
    from affinity.models import build_model

    return build_model(spec, data.X.shape[1], data.n_tasks, seed)


def _encode_texts(data: SplitTable, spec: ModelSpec) -> SplitTable:
    from affinity.transformer import encode_texts

    return encode_texts(data, spec)


def _sign_features(data: SplitTable, spec: ModelSpec) -> SplitTable:
    from affinity.sign import sign_inputs

    return sign_inputs(data, spec)


def _build_transformer(spec: ModelSpec, data: SplitTable, seed: int) -> nn.Module:
    from affinity.transformer import build_transformer

    return build_transformer(spec, data, seed)


def _transformer_memory(manifest: Manifest, shape: DatasetShape) -> MemoryEstimate:
    from affinity.transformer_footprint import transformer_memory

    return transformer_memory(manifest, shape)


def _transformer_seconds(manifest: Manifest, shape: DatasetShape) -> TimeEstimate:
    from affinity.transformer_footprint import transformer_seconds

    return transformer_seconds(manifest, shape)


DATA_KINDS: dict[str, DataKind] = {
    "table": DataKind("table", _read_table, sized=True, columns=(("features", True),),
                      sources=("csv", "parquet", "npz")),
    "text": DataKind("text", _read_text, sized=True, columns=(("text", False), ("text_pair", False))),
    "images": DataKind("images", _read_images, sized=True, sources=("images",)),
    "graph": DataKind("graph", _read_graph, sized=True, columns=(("features", True), ("node_column", False)),
                      sources=("graph",)),
}
MODEL_KINDS: dict[str, ModelKind] = {
    "mlp": ModelKind("mlp", ("table",), _build_mlp, memory=mlp_memory, seconds=mlp_seconds,
                     fields=MODEL_FIELDS["mlp"]),
    "transformer": ModelKind("transformer", ("text",), _build_transformer, _encode_texts,
                             memory=_transformer_memory, seconds=_transformer_seconds,
                             fields=MODEL_FIELDS["transformer"]),
    "cnn": ModelKind("cnn", ("images",), _build_cnn, memory=cnn_memory, seconds=cnn_seconds,
                     fields=MODEL_FIELDS["cnn"]),
    "sign": ModelKind("sign", ("graph",), _build_mlp, _sign_features, memory=sign_memory, seconds=sign_seconds,
                      fields=MODEL_FIELDS["sign"]),
}
DATA_GROUP, MODEL_GROUP = "task_affinity.datasets", "task_affinity.models"


def _plugin_names(group: str) -> list[str]:
    return sorted({ep.name for ep in entry_points(group=group)})


def _plugin(group: str, name: str, cls: type, field: str):
    found = [ep for ep in entry_points(group=group) if ep.name == name]
    if not found:
        return None
    try:
        kind = found[0].load()
    except Exception as exc:  # a broken plug-in package: say which, never a traceback
        raise DataError(f"{field} {name!r}: the plug-in {found[0].value!r} failed to load ({exc}); fix or "
                        "reinstall that package") from None
    if not isinstance(kind, cls):
        raise DataError(f"{field} {name!r}: the plug-in {found[0].value!r} is not an affinity.kinds.{cls.__name__}")
    return replace(kind, name=name)


def data_kind_names() -> list[str]:
    """The built-in data kinds, then those of installed plug-ins."""
    return [*DATA_KINDS, *(n for n in _plugin_names(DATA_GROUP) if n not in DATA_KINDS)]


def model_kind_names() -> list[str]:
    """The built-in model kinds, then those of installed plug-ins."""
    return [*MODEL_KINDS, *(n for n in _plugin_names(MODEL_GROUP) if n not in MODEL_KINDS)]


def data_kind(name: str) -> DataKind:
    kind = DATA_KINDS.get(name) or _plugin(DATA_GROUP, name, DataKind, "dataset.kind")
    if kind is None:
        raise DataError(f"dataset.kind {name!r} is not known; use one of {data_kind_names()}")
    return kind


def model_kind(name: str) -> ModelKind:
    kind = MODEL_KINDS.get(name) or _plugin(MODEL_GROUP, name, ModelKind, "model.kind")
    if kind is None:
        raise DataError(f"model.kind {name!r} is not known; use one of {model_kind_names()}")
    return kind


def load_data(manifest: Manifest) -> SplitTable:
    """The manifest's dataset read by its data kind, split, and encoded for its model kind."""
    from affinity.data import load_dataset

    kind = model_kind(manifest.model.kind)
    if manifest.dataset.kind not in kind.accepts:
        raise DataError(
            f"model.kind {kind.name!r} takes dataset.kind {' or '.join(kind.accepts)}, not {manifest.dataset.kind!r}; "
            "change one of them"
        )
    return kind.inputs(load_dataset(manifest.dataset), manifest.model)


def make_model(spec: ModelSpec, data: SplitTable, seed: int) -> nn.Module:
    """A fresh model of ``spec.kind`` for ``data`` (inputs as encoded by :func:`load_data`)."""
    return model_kind(spec.kind).build(spec, data, seed)


def describe_kinds() -> dict[str, list[dict]]:
    """Every data and model kind (built-in, then installed plug-ins) as the service lists them: a data kind's
    column fields and sources, a model kind's data kinds, its model fields with their starting values, and the model,
    training, estimation and grouping sections of the first built-in job that uses it (settings known to run;
    empty for a plug-in). A plug-in that fails to load
    is listed with its error."""
    from affinity.defaults import BUILTIN_JOBS
    from affinity.manifest import parse_manifest

    starts: dict[str, dict] = {}
    for job in BUILTIN_JOBS.values():
        kind = parse_manifest(job).model.kind
        starts.setdefault(kind, {k: job[k] for k in ("model", "training", "estimation", "grouping") if k in job})
    data, models = [], []
    for name in data_kind_names():
        try:
            kind = data_kind(name)
            data.append({"name": name, "columns": [{"field": f, "many": many} for f, many in kind.columns],
                         "sources": list(kind.sources), "estimated": kind.sized})
        except DataError as exc:
            data.append({"name": name, "error": str(exc)})
    for name in model_kind_names():
        try:
            kind = model_kind(name)
            settings = starts.get(name, {})
            given = settings.get("model", {})
            fields = {f: given.get(f, ModelSpec.model_fields[f].get_default(call_default_factory=True))
                      for f in kind.fields if f in ModelSpec.model_fields}
            models.append({"name": name, "accepts": list(kind.accepts), "settings": settings, "fields": fields,
                           "estimated": kind.memory is not None and kind.seconds is not None})
        except DataError as exc:
            models.append({"name": name, "error": str(exc)})
    return {"data": data, "models": models}
