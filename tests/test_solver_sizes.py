"""Tests of the grouping solver on planted groups of uneven sizes (issue 20): the local search on
partitions, the factor's read-off rounding, the polish's early certified stop, SCS's time limit
and method "auto"."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from solver import SolverError, cluster, partition_objective
from solver.local_search import refine, split_merge, task_moves
from solver.lowrank import solve_lowrank
from solver.rounding import partition_of_factor
from solver.sdp import solve_sdp


def uneven(n: int, k: int, sigma: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """0.8 within groups, 0.2 across, + sigma·N(0,1), symmetrized; each task's group drawn
    uniformly from k (as benchmarks/grouping_solver.py --groups random), relabelled 0..k'−1."""
    rng = np.random.default_rng(seed)
    labels = np.unique(rng.integers(k, size=n), return_inverse=True)[1]
    T = np.where(labels[:, None] == labels[None, :], 0.8, 0.2) + sigma * rng.standard_normal((n, n))
    return (T + T.T) / 2, labels


def test_task_moves_gain_is_the_objective_change() -> None:
    """Every accepted task move raises ⟨T, X_P⟩: the result beats a random start, keeps k
    non-empty groups, and a second call finds nothing to move."""
    rng = np.random.default_rng(0)
    R = rng.random((60, 60))
    T = (R + R.T) / 2
    start = np.arange(60) % 6
    labels, moves = task_moves(T, start, 6)
    assert moves > 0
    assert partition_objective(T, labels) > partition_objective(T, start)
    assert sorted(np.unique(labels)) == list(range(6))
    again, more = task_moves(T, labels, 6)
    assert more == 0 and np.array_equal(again, labels)


def test_split_merge_repairs_a_merged_and_split_start() -> None:
    """A start that merges two planted groups and splits a third: no single task move helps, one
    split–merge move restores the planted partition."""
    T, truth = uneven(300, 30, seed=1)
    bad = truth.copy()
    bad[truth == 1] = 0
    idx = np.flatnonzero(truth == 2)
    bad[idx[: len(idx) // 2]] = 1
    stuck, _ = task_moves(T, bad, 30)
    assert adjusted_rand_score(truth, stuck) < 1.0
    fixed, moves = split_merge(T, stuck, 30)
    assert moves >= 1 and adjusted_rand_score(truth, fixed) == 1.0
    assert adjusted_rand_score(truth, refine(T, bad, 30)) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refine_never_lowers_the_objective(seed: int) -> None:
    """On unstructured T (no planted partition) refine still returns exactly k groups and an
    objective at least the start's."""
    rng = np.random.default_rng(seed)
    R = rng.random((80, 80))
    T = (R + R.T) / 2
    start = rng.integers(8, size=80)
    start[:8] = np.arange(8)
    out = refine(T, start, 8)
    assert out.max() + 1 == 8 and len(np.unique(out)) == 8
    assert partition_objective(T, out) >= partition_objective(T, start)


def test_partition_of_factor() -> None:
    """A partition factor U = Z diag(|G|^{-1/2}) (plus empty columns) reads off as its partition;
    a factor whose rows mix groups does not."""
    labels = np.array([0, 0, 1, 1, 1, 2])
    U = np.zeros((6, 5))
    U[np.arange(6), labels] = 1 / np.sqrt(np.bincount(labels)[labels])
    assert np.array_equal(partition_of_factor(U, 3), labels)
    U[0, 1] = 0.5
    assert partition_of_factor(U, 3) is None
    assert partition_of_factor(U[:, :3], 4) is None


@pytest.mark.parametrize("n,k", [(400, 40), (700, 70)])
def test_lowrank_recovers_uneven_planted_groups(n: int, k: int) -> None:
    """Groups of random sizes (1 to ~20 tasks): lowrank returns the planted partition, the factor
    is read off without k-means, and its relaxation equals ⟨T, X_P⟩ to the solver's tolerance."""
    T, truth = uneven(n, k, seed=3)
    g = cluster(T, int(truth.max()) + 1, method="lowrank")
    assert adjusted_rand_score(truth, g.labels) == 1.0
    assert g.certificate["escapes"] == 0
    assert g.relaxation_objective == pytest.approx(g.objective, rel=1e-5)


def test_polish_stops_when_its_bound_certifies_the_factor() -> None:
    """n = 100, groups of random sizes: the full-cone ADMM stops once its dual upper bound is
    within gap_tol of the factor's exactly feasible objective; the factor's point is kept with
    that bound, which is above SCS's optimum, and the relaxation is within 0.1% of SCS's."""
    T, truth = uneven(100, 10, seed=4)
    k = int(truth.max()) + 1
    g = cluster(T, k, method="lowrank")
    cert = g.certificate
    assert cert["polish"] == "full_cone_admm" and cert["stopped_by"] == "known_feasible"
    assert cert["feasible_objective"] == cert["nonnegative_factor"]["feasible_objective"]
    assert cert["certified_gap"] <= cert["gap_tol"]
    _, scs = solve_sdp(T, k)
    ref = scs["relaxation_objective"]
    assert cert["upper_bound"] >= ref * (1 - 1e-5)
    assert cert["feasible_objective"] <= ref * (1 + 1e-5)
    assert abs(g.relaxation_objective - ref) / ref < 1e-3
    assert adjusted_rand_score(truth, g.labels) == 1.0


def test_scs_time_limit_raises_solver_error() -> None:
    T, _ = uneven(120, 12, seed=5)
    with pytest.raises(SolverError, match="time_limit"):
        solve_sdp(T, 12, time_limit=1e-3)


def test_auto_uses_scs_for_few_tasks_and_falls_back_to_lowrank(monkeypatch) -> None:
    """method="auto": SCS up to AUTO_SDP_MAX_N tasks, lowrank above; an SCS run cut at its time
    limit is replaced by lowrank, with the reason in the certificate."""
    import importlib
    cl = importlib.import_module("solver.cluster")
    T, truth = uneven(40, 4, seed=6)
    k = int(truth.max()) + 1
    g = cluster(T, k, method="auto")
    assert g.method == "sdp" and "auto_fallback" not in g.certificate
    monkeypatch.setattr(cl, "AUTO_SCS_TIME_LIMIT", 1e-4)
    cut = cluster(T, k, method="auto")
    assert cut.method == "lowrank" and "time_limit" in cut.certificate["auto_fallback"]
    assert adjusted_rand_score(g.labels, cut.labels) == 1.0
    T2, truth2 = uneven(cl.AUTO_SDP_MAX_N + 10, 5, seed=7)
    assert cluster(T2, int(truth2.max()) + 1, method="auto").method == "lowrank"
