"""The in-memory form of a multitask dataset: a wide table of features and per-task labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from affinity.data.graph import Graph

TASK_TYPES = ("binary", "regression")


class DataError(ValueError):
    """A dataset that cannot be used; the message names the column or task and the fix."""


@dataclass
class TaskTable:
    """Features ``X`` (rows × features) and labels ``Y`` (rows × tasks, NaN = not labelled)."""

    X: np.ndarray
    Y: np.ndarray
    task_names: list[str]
    task_types: list[str]
    feature_names: list[str]
    truth_groups: list[list[str]] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    texts: list[tuple[str, ...]] | None = None  # kind text: each row's text (or pair of texts); X is then empty
    graph: "Graph | None" = None  # kind graph: the edges between the rows (one row per node)
    # rows the source holds out as test rows for every task they label (a generator's extra draws), besides
    # dataset.test_fraction's share of the others; None: none
    test_rows: np.ndarray | None = None

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)


@dataclass
class SplitTable:
    """A TaskTable after the per-task train/validation split and feature standardization.

    ``train`` and ``val`` are boolean (rows × tasks) masks: row r is a training (validation)
    example of task t. A row can be labelled for several tasks.
    """

    X: np.ndarray
    Y: np.ndarray
    train: np.ndarray
    val: np.ndarray
    task_names: list[str]
    task_types: list[str]
    feature_names: list[str]
    feature_mean: np.ndarray
    feature_std: np.ndarray
    truth_groups: list[list[str]] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    test: np.ndarray | None = None  # (rows × tasks) held-out test pairs, never trained or selected on
    texts: list[tuple[str, ...]] | None = None  # kind text: each row's text(s); the model kind encodes them into X
    graph: "Graph | None" = None  # kind graph: the edges between the rows; the model kind propagates X over them

    def __post_init__(self) -> None:
        if self.test is None:
            self.test = np.zeros_like(self.train)

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    @property
    def is_binary(self) -> np.ndarray:
        return np.array([t == "binary" for t in self.task_types])

    def summary(self) -> dict[str, Any]:
        out = {
            "rows": int(self.X.shape[0]),
            "features": int(self.X.shape[1]),
            "tasks": self.n_tasks,
            "train_labels": int(self.train.sum()),
            "val_labels": int(self.val.sum()),
            "test_labels": int(self.test.sum()),
        }
        if self.graph is not None:
            out["graph"] = self.graph.summary()
        return out


def check_table(table: TaskTable, min_rows_per_task: int) -> None:
    """Refuse features that are not finite, duplicate names, and tasks too small to split."""
    X, Y = table.X, table.Y
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise DataError(f"features and labels disagree in shape: X {X.shape}, Y {Y.shape}; give one row per example")
    if X.shape[0] == 0:
        raise DataError("the dataset has no rows; give a table with at least one example per row")
    if X.shape[1] == 0:
        raise DataError("the dataset has no feature columns; list them in dataset.features")
    bad = ~np.isfinite(X)
    if bad.any():
        col = int(np.argwhere(bad.any(axis=0))[0, 0])
        row = int(np.argwhere(bad[:, col])[0, 0])
        raise DataError(
            f"feature {table.feature_names[col]!r} has a missing, NaN or infinite value at row {row} "
            f"({int(bad[:, col].sum())} such rows); impute or drop those rows, features must be finite"
        )
    for names, what in ((table.task_names, "task"), (table.feature_names, "feature")):
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise DataError(f"duplicate {what} names {dups}; give every {what} a distinct name")
    overlap = sorted(set(table.task_names) & set(table.feature_names))
    if overlap:
        raise DataError(f"columns {overlap} are both features and tasks; a label column cannot be a feature")
    check_labels(table, min_rows_per_task)


def check_labels(table: TaskTable, min_rows_per_task: int) -> None:
    """Refuse tasks that are missing, too small to split, or whose labels do not fit their type."""
    Y = table.Y
    if len(table.task_names) == 0:
        raise DataError("the dataset has no tasks; list the label columns in dataset.tasks")
    dups = sorted({n for n in table.task_names if list(table.task_names).count(n) > 1})
    if dups:  # the built-in kinds check it in check_table; a plug-in's table is checked here
        raise DataError(f"duplicate task names {dups}; give every task a distinct name")
    for t, (name, kind) in enumerate(zip(table.task_names, table.task_types)):
        y = Y[:, t]
        if np.isinf(y).any():
            raise DataError(f"task {name!r} has infinite labels; use an empty cell for 'not labelled'")
        labelled = y[~np.isnan(y)]
        if labelled.size < min_rows_per_task:
            raise DataError(
                f"task {name!r} has {labelled.size} labelled rows, fewer than dataset.min_rows_per_task="
                f"{min_rows_per_task}; label more rows, drop the task, or lower min_rows_per_task"
            )
        if kind == "binary":
            values = np.unique(labelled)
            if not np.isin(values, (0.0, 1.0)).all():
                shown = [float(v) for v in values[~np.isin(values, (0.0, 1.0))][:5]]
                raise DataError(
                    f"binary task {name!r} has labels {shown} other than 0/1; recode it to 0/1 or declare it "
                    f"type 'regression'"
                )
            counts = [int((labelled == c).sum()) for c in (0.0, 1.0)]
            if min(counts) == 0:
                raise DataError(
                    f"binary task {name!r} has only one class (0: {counts[0]}, 1: {counts[1]} rows); "
                    f"a task needs both classes, drop it or label rows of the other class"
                )
            if min(counts) < 2:
                raise DataError(
                    f"binary task {name!r} has a class with a single row (0: {counts[0]}, 1: {counts[1]}); "
                    f"the train/validation split needs at least 2 rows of each class"
                )
        elif float(np.nanstd(labelled)) == 0.0:
            raise DataError(f"regression task {name!r} has a constant label; drop it, there is nothing to learn")
