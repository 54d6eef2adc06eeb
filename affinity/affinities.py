"""Pairwise affinity from a per-subset table of validation losses (any estimator)."""

from __future__ import annotations

import numpy as np


def pairwise_affinity(subsets: list[tuple[int, ...]], losses: np.ndarray, base_loss: np.ndarray,
                      n_tasks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T[i, j] = mean over subsets containing i and j of (base loss of i − loss of i in the subset).

    ``losses[s, k]`` is the validation loss of task ``subsets[s][k]`` in subset s. Returns the
    symmetrized matrix (T + Tᵀ)/2 with a zero diagonal (pairs never covered are 0), the pair counts,
    and the per-task mean gain over all its subsets (the diagonal before zeroing).
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
    both = (counts > 0) & (counts.T > 0)
    T = np.where(both, (directed + directed.T) / 2, 0.0)
    np.fill_diagonal(T, 0.0)
    return T, counts, self_gain
