"""Baseline groupings straight from T (no SDP): spectral and average-linkage clustering."""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.cluster import AgglomerativeClustering, SpectralClustering

from .rounding import repair


def _unit_range(T: np.ndarray) -> np.ndarray:
    """(T − min T)/(max T − min T) ∈ [0, 1] (all ones if T is constant)."""
    lo, hi = float(T.min()), float(T.max())
    return np.ones_like(T) if hi - lo <= 0 else (T - lo) / (hi - lo)


def spectral_labels(T: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """sklearn SpectralClustering on the affinity (T − min T)/(max T − min T) (non-negative, same
    ordering as T), affinity="precomputed", k-means label assignment, random_state=seed."""
    if k == 1:
        return np.zeros(T.shape[0], dtype=np.int64)
    A = _unit_range(T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "graph is not fully connected"
        labels = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed,
                                    assign_labels="kmeans").fit_predict(A)
    return repair(A, labels, k)


def agglomerative_labels(T: np.ndarray, k: int) -> np.ndarray:
    """Average-linkage clustering on the distance D = max T − T (zero diagonal), precomputed."""
    D = float(T.max()) - T
    np.fill_diagonal(D, 0.0)
    labels = AgglomerativeClustering(n_clusters=k, metric="precomputed",
                                     linkage="average").fit_predict(D)
    return repair(D, labels, k)
