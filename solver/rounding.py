"""Rounding a relaxed solution to a partition into exactly k non-empty groups.

Each task is a point (a row of X, or of a factor U with X = UUᵀ); k-means groups the points,
several seeds are tried and the partition with the largest ⟨T, X_P⟩ (see grouping.py) is kept.
k-means can return empty or duplicate clusters (e.g. on identical rows); ``repair`` then splits
the largest group by moving its point farthest from the group's mean into a new group until
there are exactly k non-empty groups.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from .grouping import canonical_labels, partition_objective


def repair(points: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Return canonical labels 0..k-1 with exactly k non-empty groups (requires k ≤ n).

    While fewer than k groups are non-empty, the point of the largest group that is farthest
    from that group's mean moves to a new group. (Labels are compacted first, so there are
    never more than k groups when the input uses at most k label values.)
    """
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and n={n}; got {k}.")
    labels = canonical_labels(labels)
    if labels.max() + 1 > k:
        raise ValueError(f"labels use {labels.max() + 1} groups, more than k={k}.")
    while labels.max() + 1 < k:
        sizes = np.bincount(labels)
        big = int(np.argmax(sizes))
        idx = np.flatnonzero(labels == big)
        dist = ((points[idx] - points[idx].mean(axis=0)) ** 2).sum(axis=1)
        labels = labels.copy()
        labels[idx[int(np.argmax(dist))]] = labels.max() + 1
    return canonical_labels(labels)


def round_kmeans(points: np.ndarray, T: np.ndarray, k: int, n_init: int = 10,
                 seed: int = 0) -> np.ndarray:
    """k-means on the rows of ``points`` with seeds seed..seed+n_init-1, each result repaired to
    exactly k groups; returns the canonical labels maximizing ⟨T, X_P⟩ (first best on ties)."""
    points = np.asarray(points, dtype=float)
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and n={n}; got {k}.")
    best, best_obj = None, -np.inf
    for s in range(seed, seed + max(1, n_init)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            raw = KMeans(n_clusters=k, n_init=1, random_state=s).fit_predict(points)
        labels = repair(points, raw, k)
        obj = partition_objective(T, labels)
        if obj > best_obj:
            best, best_obj = labels, obj
    return best


def partition_of_factor(U: np.ndarray, k: int, tol: float = 1e-3) -> np.ndarray | None:
    """The partition X = UUᵀ already is, if any: rows grouped by their largest column, accepted
    when there are k groups and ‖UUᵀ − X_P‖_F ≤ tol·‖X_P‖_F (‖X_P‖_F = √k); else None.

    O(nr): ‖UUᵀ − X_P‖²_F = ‖UᵀU‖²_F − 2 Σ_G ‖1_Gᵀ U‖²/|G| + k. k-means on such rows returns this
    partition anyway (the rows of one group are nearly equal, other groups' rows nearly orthogonal),
    at the cost of n_init k-means runs on n points in r = 2k dimensions."""
    U = np.asarray(U, dtype=float)
    labels = canonical_labels(U.argmax(axis=1))
    if labels.max() + 1 != k:
        return None
    sums = np.zeros((k, U.shape[1]))
    np.add.at(sums, labels, U)
    sizes = np.bincount(labels, minlength=k)
    gram = U.T @ U
    dist2 = float((gram * gram).sum() - 2 * ((sums * sums).sum(axis=1) / sizes).sum() + k)
    return labels if dist2 <= (tol * tol) * k else None


def round_factor(U: np.ndarray, T: np.ndarray, k: int, n_init: int = 10, seed: int = 0) -> np.ndarray:
    """Rounding of a non-negative factor (X = UUᵀ): the partition X already is when there is one
    (partition_of_factor), else round_kmeans on U's rows."""
    labels = partition_of_factor(U, k)
    return labels if labels is not None else round_kmeans(U, T, k, n_init=n_init, seed=seed)
