"""Seeded per-task train/validation split and train-only feature standardization."""

from __future__ import annotations

import numpy as np

from affinity.data.table import SplitTable, TaskTable


def split_table(table: TaskTable, val_fraction: float, seed: int, standardize: bool = True) -> SplitTable:
    """Split every task's labelled rows into train and validation (stratified for binary tasks).

    Each task is split with its own stream of a seeded generator, so adding a task does not
    change the split of the others. Features are standardized with the mean and standard
    deviation of the rows that are a training example of at least one task.
    """
    n, t = table.Y.shape
    train = np.zeros((n, t), dtype=bool)
    val = np.zeros((n, t), dtype=bool)
    seeds = np.random.SeedSequence(seed).spawn(t)
    for j in range(t):
        rng = np.random.default_rng(seeds[j])
        rows = np.flatnonzero(~np.isnan(table.Y[:, j]))
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
    X = table.X.astype(np.float64)
    fit_rows = train.any(axis=1)
    if standardize:
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
        feature_std=std, truth_groups=table.truth_groups, metadata=dict(table.metadata),
    )
