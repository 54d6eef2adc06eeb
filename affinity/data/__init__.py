"""Datasets: user tables (CSV, Parquet, NPZ) and built-ins, split and standardized for training."""

from __future__ import annotations

from affinity.data.digits import make_digits
from affinity.data.files import read_table_file
from affinity.data.planted import make_planted
from affinity.data.real import make_yeast
from affinity.data.synthetic import make_synthetic
from affinity.data.split import split_table
from affinity.data.table import DataError, SplitTable, TaskTable, check_table
from affinity.manifest import DatasetSpec

BUILTINS = {"planted": make_planted, "digits": make_digits, "synthetic": make_synthetic, "yeast": make_yeast}


def read_table(spec: DatasetSpec) -> TaskTable:
    """The raw table named by a manifest's dataset section, checked."""
    if spec.source in BUILTINS:
        table = BUILTINS[spec.source](spec.params)
    else:
        if spec.params:
            raise DataError("dataset.params applies to built-in datasets only; remove it for a file source")
        table = read_table_file(spec)
    check_table(table, spec.min_rows_per_task)
    return table


def load_dataset(spec: DatasetSpec) -> SplitTable:
    """Read, check, split and standardize the dataset of a manifest."""
    return split_table(read_table(spec), spec.val_fraction, spec.seed, spec.standardize, spec.split,
                       spec.test_fraction)


__all__ = ["BUILTINS", "DataError", "SplitTable", "TaskTable", "load_dataset", "read_table"]
