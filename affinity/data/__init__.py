"""Datasets: user tables (CSV, Parquet, NPZ) and built-ins, split and standardized for training."""

from __future__ import annotations

import numpy as np

from affinity.data.digits import make_digits
from affinity.data.files import read_table_file
from affinity.data.planted import make_planted
from affinity.data.real import make_yeast
from affinity.data.sentences import make_sentences
from affinity.data.synthetic import make_synthetic
from affinity.data.split import split_table
from affinity.data.table import DataError, SplitTable, TaskTable, check_labels, check_table
from affinity.manifest import DatasetSpec

# Every built-in dataset by name; `text` is of kind text (its rows are sentences, affinity/data/text.py).
BUILTINS = {"planted": make_planted, "digits": make_digits, "synthetic": make_synthetic, "yeast": make_yeast,
            "text": make_sentences}


def read_table(spec: DatasetSpec) -> TaskTable:
    """The raw table named by a manifest's dataset section (kind table), checked."""
    if spec.source in BUILTINS:
        table = BUILTINS[spec.source](spec.params)
    else:
        if spec.params:
            raise DataError("dataset.params applies to built-in datasets only; remove it for a file source")
        table = read_table_file(spec)
    if table.texts is not None:
        raise DataError(f"dataset.source {spec.source!r} holds texts; set dataset.kind to 'text' (or leave it out)")
    check_table(table, spec.min_rows_per_task)
    return table


def read_any(spec: DatasetSpec) -> TaskTable:
    """The raw dataset of a manifest, read by its data kind (affinity.kinds)."""
    from affinity.kinds import data_kind

    return data_kind(spec.kind).read(spec)


def load_dataset(spec: DatasetSpec) -> SplitTable:
    """Read (by the data kind), check, split and standardize the dataset of a manifest."""
    table = read_any(spec)
    check_labels(table, spec.min_rows_per_task)  # every kind's labels, a plug-in's too
    X = np.asarray(table.X)
    if X.dtype.kind == "f" and X.size and not np.isfinite(X).all():  # a plug-in kind's inputs are not checked else
        row = int(np.flatnonzero(~np.isfinite(X.reshape(len(X), -1)).all(axis=1))[0])
        raise DataError(f"dataset.kind {spec.kind!r} gave inputs with NaN or infinite values (first in row {row}); "
                        "inputs must be finite")
    split = split_table(table, spec.val_fraction, spec.seed, spec.standardize and table.texts is None, spec.split,
                        spec.test_fraction)
    bad = ~np.isfinite(split.X.reshape(len(split.X), -1)).all(axis=0)
    if split.X.size and split.X.ndim == 2:  # a spread that overflows would standardize the column to zeros
        bad |= ~(np.isfinite(split.feature_mean) & np.isfinite(split.feature_std))
    if bad.any():
        col = int(np.flatnonzero(bad)[0])
        name = table.feature_names[col] if len(table.feature_names) == bad.size else f"column {col}"
        raise DataError(f"feature {name!r} has values too large for float32 (beyond ±3.4e38, or whose spread "
                        "overflows); rescale it, e.g. to units of a thousand or a million")
    split.texts = table.texts
    split.graph = table.graph
    return split


__all__ = ["BUILTINS", "DataError", "SplitTable", "TaskTable", "load_dataset", "read_table"]
