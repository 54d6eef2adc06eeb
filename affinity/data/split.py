"""Seeded train/validation split (per task, or per row for all tasks) and train-only feature standardization."""

from __future__ import annotations

import numpy as np

from affinity.data.table import DataError, SplitTable, TaskTable


def split_table(table: TaskTable, val_fraction: float, seed: int, standardize: bool = True,
                by: str = "auto", test_fraction: float = 0.0) -> SplitTable:
    """Split the labelled (row, task) pairs into train and validation (and held-out test rows).

    Rows the table reserves as test rows (``table.test_rows``: a generator's extra draws) are test rows
    of every task they label. test_fraction > 0 then holds out a seeded share of the other labelled rows for every task at once
    (``test``): nothing is trained, stopped or selected on them; they score what a grouping buys
    (``evaluate``, ``validate``, the outcome suite). A task left without test rows is refused.
    The rest is split as below.

    by="task": every task's labelled rows are split on their own (stratified for binary tasks),
    each task with its own stream of a seeded generator, so adding a task does not change the
    split of the others; a row can then be a training example of one task and a validation
    example of another. by="row": a seeded share of the rows is held out for every task at once,
    so no input the base model trained on is scored in validation (with multi-label rows the
    per-task split leaks inputs across tasks); a task the random share leaves without training or
    validation rows gets one of its rows moved across (the one labelled for fewest tasks), and a
    task that still has none is refused. by="auto": "row" when some row is labelled for several
    tasks, "task" when every row labels one task (then both hold out whole rows). Features are standardized with the mean and standard deviation of the rows that
    are a training example of at least one task.
    """
    n, t = table.Y.shape
    labelled = ~np.isnan(table.Y)
    test = np.zeros((n, t), dtype=bool)
    if table.test_rows is not None:
        test = labelled & np.asarray(table.test_rows, dtype=bool)[:, None]
        labelled = labelled & ~test
    if test_fraction > 0:
        rows = np.flatnonzero(labelled.any(axis=1))
        perm = np.random.default_rng([seed, 0x7E57]).permutation(rows)
        held = np.zeros(n, dtype=bool)
        held[perm[:int(round(test_fraction * len(perm)))]] = True
        test = test | (labelled & held[:, None])
        labelled = labelled & ~held[:, None]
        for j in range(t):
            if test[:, j].sum() == 0 or labelled[:, j].sum() < 4:
                raise DataError(
                    f"the held-out test share {test_fraction} leaves task '{table.task_names[j]}' with "
                    f"{int(test[:, j].sum())} test and {int(labelled[:, j].sum())} train/validation rows; "
                    f"label more rows of it or drop it"
                )
    if by == "auto":
        by = "row" if bool((labelled.sum(axis=1) > 1).any()) else "task"
    if by == "row":
        rows = np.flatnonzero(labelled.any(axis=1))
        perm = np.random.default_rng(seed).permutation(rows)
        held = np.zeros(n, dtype=bool)
        held[perm[:int(round(val_fraction * len(perm)))]] = True
        _repair_row_split(labelled, held, np.random.default_rng([seed, 0x5B11]))
        train, val = labelled & ~held[:, None], labelled & held[:, None]
        for j in range(t):
            n_train, n_val = int(train[:, j].sum()), int(val[:, j].sum())
            if n_train == 0 or n_val == 0:
                raise DataError(
                    f"dataset.split: 'row' leaves task '{table.task_names[j]}' with {n_train} training and "
                    f"{n_val} validation rows (of {int(labelled[:, j].sum())} labelled); use split: 'task' or "
                    f"label more rows of it"
                )
    elif by == "task":
        train = np.zeros((n, t), dtype=bool)
        val = np.zeros((n, t), dtype=bool)
        seeds = np.random.SeedSequence(seed).spawn(t)
        for j in range(t):
            rng = np.random.default_rng(seeds[j])
            rows = np.flatnonzero(labelled[:, j])
            if table.task_types[j] == "binary":
                strata = [rows[table.Y[rows, j] == c] for c in (0.0, 1.0)]
            else:
                strata = [rows]
            for stratum in strata:
                perm = rng.permutation(stratum)
                n_val = int(round(val_fraction * len(perm)))
                n_val = min(max(n_val, 1), len(perm) - 1)
                val[perm[:n_val], j] = True
                train[perm[n_val:], j] = True
    else:
        raise ValueError(f"by={by!r}: use 'auto', 'task' or 'row'")
    X = table.X.astype(np.float64)
    fit_rows = train.any(axis=1)
    with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 (or whose spread overflows): the
        if standardize:                                  # caller refuses the non-finite result, naming the feature
            mean = X[fit_rows].mean(axis=0)
            std = X[fit_rows].std(axis=0)
            std = np.where(std > 1e-12, std, 1.0)
        else:
            mean = np.zeros(X.shape[1])
            std = np.ones(X.shape[1])
        Xs = ((X - mean) / std).astype(np.float32)
    return SplitTable(
        X=Xs, Y=table.Y.astype(np.float32), train=train, val=val, task_names=list(table.task_names),
        task_types=list(table.task_types), feature_names=list(table.feature_names), feature_mean=mean,
        feature_std=std, truth_groups=table.truth_groups, metadata=dict(table.metadata), test=test,
    )


def _repair_row_split(labelled: np.ndarray, held: np.ndarray, rng: np.random.Generator) -> None:
    """Give every task with ≥ 2 labelled rows a training and a validation row, moving whole rows.

    For a task short of one side, one of its rows on the other side moves across: the one labelled
    for fewest tasks (ties at random) among those whose move leaves no task without that side's
    last row. In place on ``held`` (True = validation)."""
    counts = labelled.sum(axis=1)
    for _ in range(2 * labelled.shape[1]):
        n_val = (labelled & held[:, None]).sum(axis=0)
        n_train = (labelled & ~held[:, None]).sum(axis=0)
        short = np.flatnonzero(((n_val == 0) | (n_train == 0)) & (labelled.sum(axis=0) >= 2))
        if len(short) == 0:
            return
        j = short[0]
        to_val = n_val[j] == 0
        side = np.flatnonzero(labelled[:, j] & (held != to_val))
        # a move must not take the last row of that side from another task
        last = (n_train if to_val else n_val) == 1
        ok = [r for r in side if not (labelled[r] & last).any()]
        if not ok:
            return
        ok = np.asarray(ok)
        r = ok[np.lexsort((rng.random(len(ok)), counts[ok]))[0]]
        held[r] = to_val
