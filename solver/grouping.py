"""The result type of :func:`solver.cluster` and the partition objective.

For a partition G_1..G_k of the n tasks, the partition matrix is
X_P[i, j] = 1/|G| if i and j are in the same group G, else 0. It is feasible for the SDP
(X_P ⪰ 0, X_P ≥ 0, X_P·1 = 1, tr X_P = k), and ⟨T, X_P⟩ = Σ_G (1/|G|) Σ_{i,j∈G} T_ij is the
sum over groups of the average affinity inside each group ("average density", times |G|).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel so that groups are numbered 0..k-1 in order of their smallest member."""
    labels = np.asarray(labels)
    _, first = np.unique(labels, return_index=True)
    order = labels[np.sort(first)]
    mapping = {old: new for new, old in enumerate(order)}
    return np.array([mapping[v] for v in labels], dtype=np.int64)


def groups_from_labels(labels: np.ndarray) -> list[list[int]]:
    """Lists of task indices per label (labels must already be canonical 0..k-1)."""
    k = int(labels.max()) + 1 if labels.size else 0
    return [np.flatnonzero(labels == g).tolist() for g in range(k)]


def labels_from_groups(groups: list[list[int]], n: int) -> np.ndarray:
    """The label of every task 0..n-1: the index of its group in ``groups`` (the inverse of groups_from_labels)."""
    labels = np.zeros(n, dtype=np.int64)
    for g, members in enumerate(groups):
        labels[list(members)] = g
    return labels


def partition_objective(T: np.ndarray, labels: np.ndarray) -> float:
    """⟨T, X_P⟩ = Σ_G (1/|G|) Σ_{i,j∈G} T_ij for the partition given by ``labels``."""
    T = np.asarray(T, dtype=float)
    total = 0.0
    for g in np.unique(labels):
        idx = np.flatnonzero(labels == g)
        total += T[np.ix_(idx, idx)].sum() / idx.size
    return float(total)


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays (recursively) to plain Python types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


@dataclass(frozen=True)
class Grouping:
    """A partition of n tasks into k non-empty groups.

    labels: group id of each task (0..k-1, groups numbered by their smallest member).
    groups: sorted task indices of each group, ordered by smallest member.
    method: the method actually used ("sdp", "lowrank", "spectral", "agglomerative").
    objective: ⟨T, X_P⟩ of the returned partition on the original (symmetrized) T.
    relaxation_objective: ⟨T, X⟩ of the SDP relaxation's X on the original T (None for baselines);
        an upper bound on ``objective`` up to solver accuracy.
    seconds: wall-clock time of the solve (for k selection, of the whole sweep).
    certificate: solver facts (constraint violations, bounds), or None.
    k_selection: None, or {"criterion", "candidates", "chosen"} when k was chosen automatically.
    """

    labels: np.ndarray
    groups: list[list[int]]
    k: int
    method: str
    objective: float
    relaxation_objective: float | None
    seconds: float
    certificate: dict[str, Any] | None = None
    k_selection: dict[str, Any] | None = None

    @classmethod
    def from_labels(cls, T: np.ndarray, labels: np.ndarray, *, method: str,
                    relaxation_objective: float | None, seconds: float,
                    certificate: dict[str, Any] | None = None,
                    k_selection: dict[str, Any] | None = None) -> "Grouping":
        """Build a Grouping from raw labels, computing the partition objective on ``T``."""
        labels = canonical_labels(labels)
        return cls(labels=labels, groups=groups_from_labels(labels), k=int(labels.max()) + 1,
                   method=method, objective=partition_objective(T, labels),
                   relaxation_objective=None if relaxation_objective is None
                   else float(relaxation_objective),
                   seconds=float(seconds), certificate=certificate, k_selection=k_selection)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable form (lists, ints, floats, strings, None)."""
        return _jsonable({
            "labels": self.labels, "groups": self.groups, "k": self.k, "method": self.method,
            "objective": self.objective, "relaxation_objective": self.relaxation_objective,
            "seconds": self.seconds, "certificate": self.certificate,
            "k_selection": self.k_selection,
        })
