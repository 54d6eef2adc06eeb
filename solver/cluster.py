"""The entry point: group n tasks into k groups from an affinity matrix T."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import numpy as np
import torch

from .baselines import agglomerative_labels, spectral_labels
from .choose_k import select_k, select_k_screened, undo_merges
from .errors import SolverError
from .full_cone import FULL_CONE_MAX_N, GAP_TOL, solve_full_cone
from .grouping import Grouping, partition_objective
from .lowrank import solve_lowrank, spectral_init_labels
from .rounding import round_factor, round_kmeans
from .sdp import solve_sdp
from .validation import check_affinity, check_k, check_method, standardize

# method "auto": SCS for n ≤ AUTO_SDP_MAX_N, cut after AUTO_SCS_TIME_LIMIT seconds of solver time
# (then lowrank), lowrank above. Measured (benchmarks/README.md, grouping solver): on planted
# groups of equal, random and power-law sizes lowrank was faster than SCS from n = 50 up (SCS's
# time grows like n³ and, on uneven sizes, jumps past 120 s between n = 100 and 400); on uniform
# random T SCS was faster at n = 30 (0.9 s against 2.4 s), lowrank from n = 60.
AUTO_SDP_MAX_N = 40
AUTO_SCS_TIME_LIMIT = 10.0
# k selection with lowrank above this n: candidates screened on the spectral start partition,
# only the SCREEN_KEEP best solved (each with the polish up to FULL_CONE_MAX_N). From n = 150
# (benchmarks/README.md, choosing k: planted n = 200 and 300 chose the same k in a sixth to a
# third of the time).
SCREEN_MIN_N = 150
SCREEN_KEEP = 4


def cluster(T: Any, k: int | str | Sequence[int], method: str = "auto", seed: int = 0,
            n_init: int = 10, solver: str = "scs", sdp_options: dict[str, Any] | None = None,
            lowrank_options: dict[str, Any] | None = None) -> Grouping:
    """Partition n tasks into k non-empty groups maximizing the average within-group affinity.

    Solves the SDP relaxation  max ⟨T, X⟩ s.t. X ⪰ 0, X ≥ 0, X·1 = 1, tr X = k  and rounds X by
    k-means (best of ``n_init`` seeds by ⟨T, X_P⟩). T: n×n affinities (larger = tasks help each
    other); an asymmetric T is replaced by (T + Tᵀ)/2 with a UserWarning. Negative entries are
    fine: adding c to every entry changes ⟨T, X⟩ by c·Σ_ij X_ij = c·n under X·1 = 1, a constant,
    so solvers work on a shifted, scaled copy and the partition does not change. The diagonal of T
    is kept as given (it adds Σ_i T_ii X_ii, i.e. T_ii/|G| per task).

    k: an int in 1..n; "auto" (candidates 2..min(n−1, max(2, n//2)); all of them if there are at
    most 40, else a geometric grid of 40); or (k_min, k_max) inclusive (same grid rule). With
    several candidates k is chosen by solver.choose_k's criterion and its merge check (both
    recorded in k_selection).

    method: "sdp" (exact, cvxpy; solver "scs" or "clarabel"), "lowrank" (non-negative
    Burer–Monteiro in torch, see solver.lowrank; for n ≤ full_cone.FULL_CONE_MAX_N it is then
    polished on the full cone X ⪰ 0, X ≥ 0 by our own ADMM, see solver.full_cone, which reaches
    the SDP optimum where U ≥ 0 cannot), "auto" (sdp for n ≤ AUTO_SDP_MAX_N = 40 with SCS cut
    after AUTO_SCS_TIME_LIMIT = 10 s of solver time, or sdp_options["time_limit"]; if SCS is cut or
    fails, lowrank, and the certificate's "auto_fallback" says why; lowrank above 40),
    "spectral" or "agglomerative" (baselines on T, no relaxation). Grouping.method names the
    method that produced the partition.
    lowrank_options: keyword arguments of solve_lowrank, plus "polish" (default True),
    "polish_max_n" (default FULL_CONE_MAX_N), "polish_gap_tol" (default full_cone.GAP_TOL) and
    "polish_time_limit" (seconds, default None). With the polish, the relaxation objective and
    certificate are the polish's (an exactly feasible X and a dual upper bound; the non-negative
    factor's certificate is kept under "nonnegative_factor"), and the partition is the better by
    ⟨T, X_P⟩ of k-means on the factor's rows and on the polished X's rows.
    Raises ValueError on invalid input, solver.SolverError if the SDP solver is not optimal.
    """
    A = check_affinity(T)
    method = check_method(method)
    ks = check_k(k, A.shape[0])
    concrete = auto_method(A.shape[0]) if method == "auto" else method

    def solve(kk: int) -> Grouping:
        return _solve_one(A, kk, method, seed, n_init, solver, sdp_options or {},
                          lowrank_options or {})

    if isinstance(ks, int):
        return solve(ks)
    start = time.perf_counter()
    options = dict(lowrank_options or {})
    k_max = min(max(ks), A.shape[0] - 1)
    candidate_solve = solve
    if concrete == "lowrank" and A.shape[0] > SCREEN_MIN_N and len(ks) > SCREEN_KEEP:
        # A lowrank solve per candidate costs seconds to a minute at these sizes: score every
        # candidate on the spectral start partition first and solve only the best SCREEN_KEEP.
        T_s = torch.as_tensor(standardize(A)[0])
        best, record = select_k_screened(A, ks, lambda kk: spectral_init_labels(T_s, kk, seed), solve,
                                         SCREEN_KEEP)
    else:
        if concrete == "lowrank" and options.get("polish", True):
            # Candidates are scored without the full-cone polish (each would cost a polish: 2.7×
            # the whole selection at n = 200); the chosen k is then solved again with it.
            def candidate_solve(kk: int) -> Grouping:
                return _solve_one(A, kk, method, seed, n_init, solver, sdp_options or {},
                                  {**options, "polish": False})

        best, record = select_k(A, ks, candidate_solve)
    best, record["merge_check"] = undo_merges(A, best, candidate_solve, k_max)
    if candidate_solve is not solve:
        record["note"] = "candidates scored without the full-cone polish; the chosen k is solved with it"
        best = solve(best.k)
    record["chosen"] = best.k
    return dataclasses.replace(best, k_selection=record, seconds=time.perf_counter() - start)


def auto_method(n: int) -> str:
    """The method "auto" tries first for n tasks (see cluster)."""
    return "sdp" if n <= AUTO_SDP_MAX_N else "lowrank"


def _solve_one(T: np.ndarray, k: int, method: str, seed: int, n_init: int, solver: str,
               sdp_options: dict[str, Any], lowrank_options: dict[str, Any]) -> Grouping:
    """One fixed k with one method ("auto": see cluster)."""
    if method == "auto":
        n = T.shape[0]
        if auto_method(n) == "lowrank":
            return _solve_one(T, k, "lowrank", seed, n_init, solver, sdp_options, lowrank_options)
        start = time.perf_counter()
        try:
            return _solve_one(T, k, "sdp", seed, n_init, solver,
                              {"time_limit": AUTO_SCS_TIME_LIMIT, **sdp_options}, lowrank_options)
        except SolverError as exc:
            reason = f"{exc} (after {time.perf_counter() - start:.1f} s); solved with lowrank instead"
        g = _solve_one(T, k, "lowrank", seed, n_init, solver, sdp_options, lowrank_options)
        return dataclasses.replace(g, certificate={**(g.certificate or {}), "auto_fallback": reason},
                                   seconds=time.perf_counter() - start)
    start = time.perf_counter()
    n = T.shape[0]
    relaxation, certificate = None, None
    if k == 1 or k == n:  # a single feasible partition; X_P is the SDP optimum too
        labels = np.zeros(n, dtype=int) if k == 1 else np.arange(n)
        if method in ("sdp", "lowrank"):
            relaxation = float(T.sum() / n) if k == 1 else float(np.trace(T))
            certificate = {"note": f"k={k}: the only feasible X is the partition matrix"}
    elif method == "sdp":
        X, certificate = solve_sdp(T, k, solver=solver, **sdp_options)
        relaxation = certificate["relaxation_objective"]
        labels = round_kmeans(X, T, k, n_init=n_init, seed=seed)
    elif method == "lowrank":
        opts = dict(lowrank_options)
        polish = opts.pop("polish", True)
        polish_max_n = opts.pop("polish_max_n", FULL_CONE_MAX_N)
        polish_gap_tol = opts.pop("polish_gap_tol", GAP_TOL)
        polish_time_limit = opts.pop("polish_time_limit", None)
        U, certificate = solve_lowrank(T, k, seed=seed, **opts)
        relaxation = certificate["relaxation_objective"]
        labels = round_factor(U, T, k, n_init=n_init, seed=seed)
        if polish and n <= polish_max_n:
            relaxation, certificate, labels = _polish(T, k, U, certificate, labels, n_init, seed,
                                                      polish_gap_tol, polish_time_limit)
    elif method == "spectral":
        labels = spectral_labels(T, k, seed=seed)
    else:
        labels = agglomerative_labels(T, k)
    return Grouping.from_labels(T, labels, method=method, relaxation_objective=relaxation,
                                seconds=time.perf_counter() - start, certificate=certificate)


# The fields of a certificate that describe its X (kept from the factor when the polish certifies it).
_PRIMAL_FIELDS = ("relaxation_objective", "max_row_sum_violation", "trace_violation", "min_entry",
                  "min_eigenvalue", "feasible_objective", "feasible_mix_weight")


def _polish(T: np.ndarray, k: int, U: np.ndarray, certificate: dict[str, Any], labels: np.ndarray,
            n_init: int, seed: int, gap_tol: float,
            time_limit: float | None) -> tuple[float, dict[str, Any], np.ndarray]:
    """Full-cone polish of the non-negative factor (solver.full_cone) and the better rounding.

    The polished certificate replaces the factor's when the polish converged or its exactly
    feasible objective is at least the factor's certified one; the partition is the
    better by ⟨T, X_P⟩ of the factor's rounding and k-means on the polished X's rows (ties: the
    factor's).

    The ADMM also stops as soon as its dual upper bound is within gap_tol of the factor's own
    exactly feasible objective (full_cone's known_feasible): the factor is then certified
    near-optimal and is kept, with the ADMM's upper bound added to its certificate (measured,
    planted groups of random sizes, n = 200: 140 ADMM iterations instead of 740, where X⁺'s trace
    violation crept to 1e-4 long after the bounds had met)."""
    X, full = solve_full_cone(T, k, X0=U @ U.T, gap_tol=gap_tol, time_limit=time_limit,
                              known_feasible=certificate.get("feasible_objective"))
    if full["stopped_by"] == "known_feasible":
        kept = {key: certificate[key] for key in _PRIMAL_FIELDS if key in certificate}
        cert = {**full, **kept, "certified_gap": full["known_feasible_gap"],
                "nonnegative_factor": certificate, "rounded_from": "nonnegative_factor"}
        return certificate["relaxation_objective"], cert, labels
    if not full["converged"] and full["feasible_objective"] < certificate.get("feasible_objective", -np.inf):
        return certificate["relaxation_objective"], {**certificate, "polish_rejected": full}, labels
    full["nonnegative_factor"] = certificate
    full["rounded_from"] = "nonnegative_factor"
    polished = round_kmeans(X, T, k, n_init=n_init, seed=seed)
    if partition_objective(T, polished) > partition_objective(T, labels):
        labels, full["rounded_from"] = polished, "full_cone"
    return full["relaxation_objective"], full, labels
