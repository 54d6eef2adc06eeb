"""Tests of solver.cluster: recovery, agreement with SCS, input checks, SolverError, k choice."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

import solver
from solver import SolverError, cluster
from solver.lowrank import solve_lowrank
from solver.sdp import solve_sdp


def planted(n: int, k: int, sigma: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """0.8 within groups, 0.2 across, + sigma·N(0,1), symmetrized; groups of near-equal size."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) * k // n)
    T = np.where(labels[:, None] == labels[None, :], 0.8, 0.2) + sigma * rng.standard_normal((n, n))
    return (T + T.T) / 2, labels


@pytest.mark.parametrize("method", ["sdp", "lowrank"])
@pytest.mark.parametrize("n,k", [(40, 4), (90, 6)])
def test_planted_recovered_exactly(method: str, n: int, k: int) -> None:
    T, truth = planted(n, k, sigma=0.2, seed=n)
    g = cluster(T, k, method=method)
    assert adjusted_rand_score(truth, g.labels) == 1.0
    assert g.method == method
    assert g.relaxation_objective >= g.objective - 1e-3 * abs(g.objective)
    json.dumps(g.to_dict())


@pytest.mark.parametrize("n", [60, 200])
def test_lowrank_matches_scs_on_planted(n: int) -> None:
    T, _ = planted(n, n // 10, sigma=0.1, seed=1)
    _, scs = solve_sdp(T, n // 10)
    _, low = solve_lowrank(T, n // 10)
    rel = abs(low["relaxation_objective"] - scs["relaxation_objective"])
    assert rel / abs(scs["relaxation_objective"]) < 1e-3
    assert low["max_row_sum_violation"] < 1e-4 and low["trace_violation"] < 1e-4
    assert low["feasible_objective"] == pytest.approx(low["relaxation_objective"], rel=1e-4)


def random_affinity(n: int, seed: int = 1) -> np.ndarray:
    """Uniform random T on [0, 1), symmetrized (as benchmarks/grouping_solver.py --random)."""
    R = np.random.default_rng(seed).random((n, n))
    return (R + R.T) / 2


@pytest.mark.parametrize("kind", ["random", "planted"])
@pytest.mark.parametrize("n", [60, 200])
def test_lowrank_relaxation_matches_scs(kind: str, n: int) -> None:
    """method="lowrank" = non-negative factor + full-cone polish (n ≤ FULL_CONE_MAX_N): its
    relaxation objective is within 0.1% of SCS's on uniform random T (where the factor alone,
    U ≥ 0, stays 1.8% / 10% below) and on planted T, and never above the certified upper bound,
    which is itself ≥ SCS's optimum (to SCS's accuracy)."""
    k = n // 10
    T = random_affinity(n) if kind == "random" else planted(n, k, sigma=0.1, seed=1)[0]
    _, scs = solve_sdp(T, k)
    ref = scs["relaxation_objective"]
    g = cluster(T, k, method="lowrank")
    cert = g.certificate
    assert cert["polish"] == "full_cone_admm" and cert["converged"]
    assert abs(g.relaxation_objective - ref) / abs(ref) < 1e-3
    assert cert["feasible_objective"] <= ref * (1 + 1e-5)
    assert cert["upper_bound"] >= ref * (1 - 1e-5)
    assert cert["feasible_objective"] <= g.relaxation_objective * (1 + 1e-4)
    assert g.relaxation_objective <= cert["upper_bound"] * (1 + 1e-4)
    # the non-negative factor alone: a lower bound, not above SCS
    low = cert["nonnegative_factor"]
    assert low["relaxation_objective"] <= ref * (1 + 1e-4)
    assert low["feasible_objective"] <= ref * (1 + 1e-4)
    assert g.objective <= cert["upper_bound"] + 1e-9 * abs(cert["upper_bound"])
    json.dumps(g.to_dict())


def test_full_cone_certificate_within_tolerance() -> None:
    """solve_full_cone's X: PSD by construction, row sums / trace / negative entries within the
    stated feasibility_tol; feasible_point gives an exactly feasible X_f with ⟨T, X_f⟩ equal to the
    reported feasible_objective; the dual upper bound is above SCS's optimum."""
    import torch
    from solver.full_cone import FEASIBILITY_TOL, feasible_point, solve_full_cone
    n, k = 60, 6
    T = random_affinity(n, seed=2)
    U, _ = solve_lowrank(T, k)
    X, info = solve_full_cone(T, k, X0=U @ U.T)
    tol = info["feasibility_tol"]
    assert tol == FEASIBILITY_TOL and info["converged"]
    assert info["max_row_sum_violation"] <= tol and info["trace_violation"] <= tol
    assert info["min_entry"] >= -tol and info["min_eigenvalue"] >= -1e-10
    assert np.abs(X.sum(axis=1) - 1).max() == pytest.approx(info["max_row_sum_violation"])
    assert np.linalg.eigvalsh(X)[0] >= -1e-10 and X.min() >= -tol
    assert info["upper_bound_gap"] <= info["gap_tol"]
    Xf, _ = feasible_point(torch.as_tensor(X), k)
    Xf = Xf.numpy()
    assert np.abs(Xf.sum(axis=1) - 1).max() < 1e-10 and abs(np.trace(Xf) - k) < 1e-10
    assert Xf.min() >= 0.0 and np.linalg.eigvalsh(Xf)[0] >= -1e-12
    assert float((T * Xf).sum()) == pytest.approx(info["feasible_objective"], rel=1e-9)
    _, scs = solve_sdp(T, k)
    ref = scs["relaxation_objective"]
    assert info["feasible_objective"] <= ref * (1 + 1e-5) <= info["upper_bound"] * (1 + 2e-5)
    assert abs(info["relaxation_objective"] - ref) / ref < 1e-3


def test_lowrank_polish_options() -> None:
    """lowrank_options: polish=False (or n above polish_max_n) keeps the non-negative factor's
    certificate, which on random T is below SCS's (the completely positive cone)."""
    T = random_affinity(60)
    a = cluster(T, 6, method="lowrank", lowrank_options={"polish": False})
    b = cluster(T, 6, method="lowrank", lowrank_options={"polish_max_n": 59})
    for g in (a, b):
        assert "polish" not in g.certificate and g.certificate["min_entry"] == 0.0
    assert a.relaxation_objective == pytest.approx(b.relaxation_objective)
    c = cluster(T, 6, method="lowrank")
    assert c.relaxation_objective > a.relaxation_objective * 1.005
    assert c.objective >= a.objective - 1e-12


def test_grouping_fields() -> None:
    T, _ = planted(30, 3, 0.1)
    g = cluster(T, 3, method="auto")
    assert g.method == "sdp" and g.k == 3 and g.k_selection is None
    assert g.labels.shape == (30,) and set(g.labels.tolist()) == {0, 1, 2}
    assert [grp[0] for grp in g.groups] == sorted(grp[0] for grp in g.groups)
    assert all(grp == sorted(grp) for grp in g.groups)
    assert sorted(i for grp in g.groups for i in grp) == list(range(30))
    assert g.objective == pytest.approx(solver.partition_objective(T, g.labels))
    d = json.loads(json.dumps(g.to_dict()))
    assert d["labels"] == g.labels.tolist() and d["certificate"]["status"] == "optimal"


GOOD = planted(10, 2, 0.1)[0]


@pytest.mark.parametrize("T,k,method,match", [
    (np.ones(5), 2, "sdp", "2-D"),
    (np.ones((3, 4)), 2, "sdp", "square"),
    (np.ones((1, 1)), 1, "sdp", "at least n=2"),
    (np.where(np.eye(4) > 0, np.nan, 1.0), 2, "sdp", "finite"),
    ([["a", "b"], ["c", "d"]], 1, "sdp", "numeric"),
    (GOOD, 0, "sdp", "k must be between 1 and n=10"),
    (GOOD, 11, "sdp", "k must be between 1 and n=10"),
    (GOOD, 2.5, "sdp", "k must be an integer"),
    (GOOD, "many", "sdp", "'auto'"),
    (GOOD, (5, 3), "sdp", "k_min <= k_max"),
    (GOOD, (1, 2, 3), "sdp", "pair"),
    (GOOD, (0, 3), "sdp", "k_min must be between"),
    (GOOD, 2, "kmeans", "method must be one of"),
])
def test_invalid_inputs(T, k, method, match) -> None:
    with pytest.raises(ValueError, match=match):
        cluster(T, k, method=method)


def test_asymmetric_warns_and_symmetrizes() -> None:
    T, truth = planted(30, 3, 0.1)
    A = T + np.triu(np.full_like(T, 0.05), 1)
    with pytest.warns(UserWarning, match="not symmetric"):
        g = cluster(A, 3, method="sdp")
    assert adjusted_rand_score(truth, g.labels) == 1.0


@pytest.mark.parametrize("method", solver.METHODS)
def test_negative_entries_same_partition(method: str) -> None:
    T, _ = planted(40, 4, 0.3, seed=3)
    a = cluster(T, 4, method=method)
    b = cluster(T - 5.0, 4, method=method)
    assert np.array_equal(a.labels, b.labels)
    assert b.objective == pytest.approx(a.objective - 5.0 * 40, rel=1e-6)


def test_solver_error_on_iteration_limit() -> None:
    T, _ = planted(30, 3, 0.5)
    with pytest.raises(SolverError, match="status"):
        cluster(T, 3, method="sdp", sdp_options={"max_iters": 5})


def test_solver_error_on_bad_status(monkeypatch) -> None:
    import cvxpy as cp

    def fake_solve(self, *args, **kwargs):
        self._status = cp.OPTIMAL_INACCURATE

    monkeypatch.setattr(cp.Problem, "solve", fake_solve)
    monkeypatch.setattr(cp.Problem, "status", property(lambda self: self._status))
    with pytest.raises(SolverError, match="optimal_inaccurate"):
        solve_sdp(planted(10, 2, 0.1)[0], 2)


@pytest.mark.parametrize("n,k,method", [(60, 4, "sdp"), (60, 6, "lowrank")])
def test_k_selection_recovers_planted_k(n: int, k: int, method: str) -> None:
    T, truth = planted(n, k, sigma=0.2, seed=k)
    g = cluster(T, (2, 8), method=method)
    assert g.k == k and g.k_selection["chosen"] == k
    assert [c["k"] for c in g.k_selection["candidates"]] == list(range(2, 9))
    assert g.k_selection["criterion"]["name"]
    assert adjusted_rand_score(truth, g.labels) == 1.0
    if method == "lowrank":  # candidates scored unpolished, the chosen k solved with the polish
        assert "without the full-cone polish" in g.k_selection["note"]
        assert g.certificate["polish"] == "full_cone_admm"
    json.dumps(g.to_dict())


def test_auto_k_grid() -> None:
    from solver.validation import check_k
    assert check_k("auto", 10) == [2, 3, 4, 5]
    grid = check_k("auto", 1000)
    assert len(grid) <= 40 and grid[0] == 2 and grid[-1] == 500 and grid == sorted(set(grid))


def test_lowrank_escapes_a_merged_and_split_start() -> None:
    """A start partition that merges two planted groups and splits a third is a saddle of the
    factorized problem that gradient steps do not leave (n = 2000 stayed at its spectral start;
    here at n = 400 they stop at a lower relaxation value); the escape step (positive-curvature
    directions of the Lagrangian, then a restart from the rounded partition) must improve it and
    reach the planted partition."""
    n, k = 400, 40
    T, truth = planted(n, k, sigma=0.1, seed=3)
    bad = truth.copy()
    bad[truth == 1] = 0  # merge groups 0 and 1
    idx = np.flatnonzero(truth == 2)
    bad[idx[: len(idx) // 2]] = 1  # split group 2 into labels 1 and 2
    U, info = solve_lowrank(T, k, init_labels=bad)
    assert info["escapes"] >= 1
    assert info["converged"] and info["max_row_sum_violation"] < 1e-4
    from solver.rounding import round_kmeans
    assert adjusted_rand_score(truth, round_kmeans(U, T, k)) == 1.0
    _, stuck = solve_lowrank(T, k, init_labels=bad, max_escapes=0)
    assert info["relaxation_objective"] > stuck["relaxation_objective"] + 1e-3


def test_partition_multipliers_make_the_partition_a_kkt_point() -> None:
    """With λ from partition_multipliers, the partition factor U_P is first-order stationary for
    the factorized Lagrangian (gradient = −2μU on the support, ≥ 0 off it), and the AL started
    there from a planted partition converges within one multiplier step."""
    import torch
    from solver.lowrank import initial_factor, partition_multipliers
    from solver.validation import standardize
    n, k = 200, 20
    T, truth = planted(n, k, sigma=0.1, seed=5)
    T_np, _, _ = standardize(T)
    T_s = torch.as_tensor(T_np)
    lam = partition_multipliers(T_s, truth, k)
    U = initial_factor(truth, k, k, 0, torch.float64, torch.device("cpu"))
    one = torch.ones(n, dtype=torch.float64)
    grad = -2.0 * T_s @ U + torch.outer(lam, U.T @ one) + torch.outer(one, U.T @ lam)
    mu = float(((T_s @ U) * U).sum() - lam @ (U @ (U.T @ one))) / k
    support = U > 0
    assert torch.allclose(grad[support], -2.0 * mu * U[support], atol=1e-8)
    assert float(grad[~support].min()) >= -1e-8
    _, info = solve_lowrank(T, k, init_labels=truth, max_escapes=0)
    assert info["converged"] and info["outer_iterations"] == 1
    assert info["max_row_sum_violation"] < 1e-4


def test_lowrank_float32_products_keep_the_certificate() -> None:
    """float32 products accumulated in float64 (product_dtype, opt-in) give the same planted
    solution and a feasibility certificate that agrees with the float64 run."""
    import torch
    n, k = 200, 20
    T, truth = planted(n, k, sigma=0.1, seed=7)
    U64, a = solve_lowrank(T, k, product_dtype=None)
    U32, b = solve_lowrank(T, k, product_dtype=torch.float32)
    assert b["max_row_sum_violation"] < 1e-5 and b["trace_violation"] < 1e-5
    assert b["feasible_objective"] == pytest.approx(a["feasible_objective"], rel=1e-6)
    assert b["relaxation_objective"] == pytest.approx(a["relaxation_objective"], rel=1e-5)
    from solver.rounding import round_kmeans
    assert adjusted_rand_score(truth, round_kmeans(U32, T, k)) == 1.0


def test_lowrank_penalty_does_not_run_away_from_a_bad_start() -> None:
    """Regression (issue 4, n = 2000 seed 1): the penalty ρ doubled whenever the row-sum
    violation stalled, also after inner solves cut short by tiny steps, and ran away (there
    ρ 153 → 6.6e11). On this n = 200 merged/split start the old rule took ρ to 1.6e4× its
    initial value (472 steps); ρ must now rise only after solved inner problems and stay bounded,
    with the same converged, feasible solution."""
    import torch
    from solver.lowrank import _projected_gradient_al, initial_factor, partition_multipliers
    from solver.validation import standardize
    n, k = 200, 20
    T, truth = planted(n, k, sigma=0.1, seed=1)
    bad = truth.copy()
    bad[truth == 1] = 0
    idx = np.flatnonzero(truth == 2)
    bad[idx[: len(idx) // 2]] = 1
    T_s = torch.as_tensor(standardize(T)[0])
    U0 = initial_factor(bad, k, 2 * k, 1, torch.float64, torch.device("cpu"))
    rho0 = max(1.0, float(T_s.abs().sum(1).max()) / (n // k))
    U, converged, _, steps, lam, rho = _projected_gradient_al(
        T_s, U0, k, 1e-5, 200, 40, None, lam=partition_multipliers(T_s, bad, k))
    assert converged and rho <= 100 * rho0 and float(lam.abs().max()) < 100
    assert float((U @ U.sum(dim=0) - 1).abs().max()) < 1e-5


def test_k_selection_screens_candidates_at_large_n() -> None:
    """Above n = 150, k selection with lowrank scores every candidate on the spectral
    start partition and solves only the best few; the planted k is still found."""
    T, truth = planted(400, 10, sigma=0.2, seed=3)
    g = cluster(T, (2, 20), method="lowrank")
    record = g.k_selection
    assert g.k == 10 and record["chosen"] == 10
    assert [c["k"] for c in record["candidates"]] == list(range(2, 21))
    assert all(c["screen_score"] is not None for c in record["candidates"])
    kept = record["screened"]["kept"]
    assert len(kept) == 4 and 10 in kept
    assert sum(c["score"] is not None for c in record["candidates"]) == 4
    assert adjusted_rand_score(truth, g.labels) == 1.0
    json.dumps(g.to_dict())


def test_k_screen_refines_a_grid_that_misses_the_planted_k() -> None:
    """'auto' at n = 240 screens a geometric grid of 2..120 that jumps from 22 to 25; the screen
    zooms into the best grid interval, so the planted k = 24 is found."""
    from solver.choose_k import select_k_screened
    from solver.lowrank import spectral_init_labels
    from solver.validation import check_k, standardize

    T, truth = planted(240, 24, sigma=0.05, seed=5)
    grid = check_k("auto", 240)
    assert 24 not in grid
    T_s = torch.as_tensor(standardize(T)[0])
    best, record = select_k_screened(T, grid, lambda kk: spectral_init_labels(T_s, kk, 0),
                                     lambda kk: cluster(T, kk, method="spectral"), keep=4)
    assert best.k == 24 and record["chosen"] == 24
    assert 24 in record["screened"]["refined"] and 24 in record["screened"]["kept"]
    screened = [c["k"] for c in record["candidates"]]
    assert screened == sorted(set(grid) | set(record["screened"]["refined"]))
    assert adjusted_rand_score(truth, best.labels) == 1.0


def test_merged_groups_are_found_and_undone() -> None:
    """Modularity's resolution limit shows as a group that is two planted groups merged; the merge
    check finds exactly those and solves k + (number found)."""
    from solver.choose_k import merged_groups, undo_merges
    from solver.grouping import Grouping

    T, truth = planted(120, 12, sigma=0.1, seed=2)
    assert merged_groups(T, truth) == []
    merged = np.where(truth == 11, 10, truth)  # groups 10 and 11 as one
    found = merged_groups(T, merged)
    assert [f["group"] for f in found] == [10] and found[0]["size"] == 20
    assert found[0]["across"] < 0.1 * found[0]["inside"]
    start = Grouping.from_labels(T, merged, method="spectral", relaxation_objective=None, seconds=0.0)
    calls = []

    def solve(kk: int) -> Grouping:
        calls.append(kk)
        return cluster(T, kk, method="spectral")

    best, record = undo_merges(T, start, solve, k_max=60)
    assert calls == [12] and best.k == 12 and adjusted_rand_score(truth, best.labels) == 1.0
    assert record == [{"k": 11, "merged_groups": 1, "missing": 1, "tried_k": 12, "merged_groups_after": 0,
                       "missing_after": 0, "kept": True}]
    # A k range that does not allow more groups leaves the choice alone.
    assert undo_merges(T, start, solve, k_max=11)[0].k == 11
    # Far below the true k each group holds several planted ones: repeated bisection counts them,
    # and one solve at the true k undoes all the merges.
    coarse = truth // 4  # 3 groups of 4 planted groups each
    found = merged_groups(T, coarse)
    assert [f["parts"] for f in found] == [4, 4, 4]
    calls.clear()
    start = Grouping.from_labels(T, coarse, method="spectral", relaxation_objective=None, seconds=0.0)
    best, record = undo_merges(T, start, solve, k_max=60)
    assert calls == [12] and adjusted_rand_score(truth, best.labels) == 1.0
    assert all(f["size"] == 40 for f in found)


def test_k_selection_undoes_the_merges_of_the_resolution_limit() -> None:
    """planted n = 400 in 40 groups of 10: Q alone picks 39 (a 39-group partition scores higher
    than the planted one); the merge check brings it back to 40."""
    T, truth = planted(400, 40, sigma=0.1, seed=0)
    g = cluster(T, "auto", method="lowrank")
    assert g.k == 40 and g.k_selection["chosen"] == 40
    assert adjusted_rand_score(truth, g.labels) == 1.0
    check = g.k_selection["merge_check"]
    assert check and check[0]["k"] < 40 and check[-1]["kept"]
    json.dumps(g.to_dict())
