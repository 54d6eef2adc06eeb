"""Pairwise affinity from a per-subset table of validation losses (any estimator)."""

from __future__ import annotations

import numpy as np


RIDGE = 1e-3  # regression fit: penalty per subset of the task (the fit is insensitive to it from 1e-4 to 1e-2)


def pairwise_affinity(subsets: list[tuple[int, ...]], losses: np.ndarray, base_loss: np.ndarray,
                      n_tasks: int, fit: str = "mean") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairwise affinity from per-subset losses; ``fit`` says how.

    "mean" (Grad-TAG's): T[i, j] = mean over subsets containing i and j of (base loss of i − loss of
    i in the subset). "regression": for every task i, its losses over the subsets that contain it
    fitted as an intercept plus one effect per other task present (a linear surrogate of i's loss in
    a subset: Li, Nguyen, Zhang, "Identification of negative transfers in multitask learning using
    surrogate models", TMLR 2023), T[i, j] = minus j's effect. A subset's other members move i's loss
    too; the mean leaves their effects in every T[i, j] as noise, the regression takes them out (on
    the outcome suite's planted groups the SDP groups of the regression's T are closer to the planted
    ones: benchmarks/README.md).

    ``losses[s, k]`` is the validation loss of task ``subsets[s][k]`` in subset s. Returns the
    symmetrized matrix (T + Tᵀ)/2 with a zero diagonal (pairs never covered are 0), the pair counts,
    and the per-task mean gain over all its subsets (the diagonal of the mean fit before zeroing).
    """
    sums = np.zeros((n_tasks, n_tasks))
    counts = np.zeros((n_tasks, n_tasks), dtype=np.int64)
    for s, row in zip(subsets, losses):
        idx = np.array(s)
        gain = base_loss[idx] - row
        sums[np.ix_(idx, idx)] += gain[:, None]
        counts[np.ix_(idx, idx)] += 1
    directed = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    self_gain = np.diag(directed).copy()
    if fit == "regression":
        directed = _regression_effects(subsets, losses, n_tasks)
    elif fit != "mean":
        raise ValueError(f"fit={fit!r}: use 'mean' or 'regression'")
    both = (counts > 0) & (counts.T > 0)
    T = np.where(both, (directed + directed.T) / 2, 0.0)
    np.fill_diagonal(T, 0.0)
    return T, counts, self_gain


def _regression_effects(subsets: list[tuple[int, ...]], losses: np.ndarray, n_tasks: int) -> np.ndarray:
    """E[i, j]: minus the effect of j's presence on i's loss, from a ridge fit (intercept unpenalized) of i's
    losses over the subsets containing it on the indicators of the other tasks present (0 where j never
    meets i). Solved in the smaller of the primal (tasks) and dual (subsets) forms; memory per task: its
    subsets × tasks."""
    padded = np.full((len(subsets), max(len(sub) for sub in subsets)), -1)
    rows_of: list[list[int]] = [[] for _ in range(n_tasks)]
    for s, subset in enumerate(subsets):
        padded[s, :len(subset)] = subset
        for t in subset:
            rows_of[t].append(s)
    E = np.zeros((n_tasks, n_tasks))
    for i in range(n_tasks):
        rows = np.asarray(rows_of[i], dtype=int)
        if len(rows) < 2:
            continue
        idx = padded[rows]
        X = np.zeros((len(rows), n_tasks))
        r, c = np.nonzero(idx >= 0)
        X[r, idx[r, c]] = 1.0
        X[:, i] = 0.0
        y = losses[rows, np.argmax(idx == i, axis=1)].astype(float)
        Xc, yc = X - X.mean(axis=0), y - y.mean()
        penalty = RIDGE * len(rows)
        if len(rows) <= n_tasks:
            theta = Xc.T @ np.linalg.solve(Xc @ Xc.T + penalty * np.eye(len(rows)), yc)
        else:
            theta = np.linalg.solve(Xc.T @ Xc + penalty * np.eye(n_tasks), Xc.T @ yc)
        E[i] = -theta
    return E
