"""The data and model kinds the stages accept, by the names a manifest uses.

A **data kind** (``dataset.kind``) reads a manifest's dataset section into a checked
:class:`~affinity.data.table.TaskTable` (inputs + per-task labels, NaN = not labelled); the split,
its checks and errors are common to every kind (affinity/data/split.py).

A **model kind** (``model.kind``) names the data kinds it takes, turns their raw inputs into the
tensor its module consumes (``inputs``: tables pass through, texts are tokenized once), and builds
the module (``build``), which has the interface documented in affinity/models.py.

The stages call :func:`load_data` and :func:`make_model` and never look at a kind's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from affinity.data.table import DataError, SplitTable, TaskTable
from affinity.manifest import DatasetSpec, Manifest, ModelSpec


@dataclass(frozen=True)
class DataKind:
    name: str
    read: Callable[[DatasetSpec], TaskTable]


@dataclass(frozen=True)
class ModelKind:
    name: str
    accepts: tuple[str, ...]
    inputs: Callable[[SplitTable, ModelSpec], SplitTable]
    build: Callable[[ModelSpec, SplitTable, int], nn.Module]


def _read_table(spec: DatasetSpec) -> TaskTable:
    from affinity.data import read_table

    return read_table(spec)


def _read_text(spec: DatasetSpec) -> TaskTable:
    from affinity.data.text import read_text

    return read_text(spec)


def _build_mlp(spec: ModelSpec, data: SplitTable, seed: int) -> nn.Module:
    from affinity.models import build_model

    return build_model(spec, data.X.shape[1], data.n_tasks, seed)


def _encode_texts(data: SplitTable, spec: ModelSpec) -> SplitTable:
    from affinity.transformer import encode_texts

    return encode_texts(data, spec)


def _build_transformer(spec: ModelSpec, data: SplitTable, seed: int) -> nn.Module:
    from affinity.transformer import build_transformer

    return build_transformer(spec, data, seed)


DATA_KINDS: dict[str, DataKind] = {
    "table": DataKind("table", _read_table),
    "text": DataKind("text", _read_text),
}
MODEL_KINDS: dict[str, ModelKind] = {
    "mlp": ModelKind("mlp", ("table",), lambda data, spec: data, _build_mlp),
    "transformer": ModelKind("transformer", ("text",), _encode_texts, _build_transformer),
}


def data_kind(name: str) -> DataKind:
    if name not in DATA_KINDS:
        raise DataError(f"dataset.kind {name!r} is not known; use one of {sorted(DATA_KINDS)}")
    return DATA_KINDS[name]


def model_kind(name: str) -> ModelKind:
    if name not in MODEL_KINDS:
        raise DataError(f"model.kind {name!r} is not known; use one of {sorted(MODEL_KINDS)}")
    return MODEL_KINDS[name]


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
