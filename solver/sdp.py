"""The exact SDP relaxation, solved with cvxpy.

    maximize ⟨T, X⟩  subject to  X ⪰ 0,  X ≥ 0 (entrywise),  X·1 = 1,  tr(X) = k

(Peng–Wei relaxation of k-means / "average density" grouping). Every partition matrix X_P is
feasible, so the optimum is an upper bound on the best partition's ⟨T, X_P⟩. The problem is
solved on the standardized T_s = (T − mu)/s (same maximizer, better conditioned); the reported
objective is ⟨T, X⟩ on the T passed in. Memory grows like n² (SCS: n=800 ≈ 33 s, n=1600 ≈ 6.5 GB).
"""
from __future__ import annotations

from typing import Any

import cvxpy as cp
import numpy as np

from .errors import SolverError
from .validation import standardize

SOLVERS = {"scs": cp.SCS, "clarabel": cp.CLARABEL}


def solve_sdp(T: np.ndarray, k: int, solver: str = "scs", eps: float = 1e-5,
              max_iters: int | None = None, time_limit: float | None = None,
              verbose: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Solve the SDP for symmetric T; return (X, info) with info holding the status, the
    relaxation objective ⟨T, X⟩ and the constraint violations of the returned X.

    solver: "scs" (default; first order, eps_abs = eps_rel = eps) or "clarabel" (interior point,
    exact but O(n⁶)-ish: fine only for n ≲ 100). time_limit: seconds of solver time (SCS's
    time_limit_secs, Clarabel's time_limit; cvxpy's compilation comes on top); a run cut there
    is not optimal, so it raises SolverError. Raises SolverError unless the status is optimal.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}; got {solver!r}.")
    n = T.shape[0]
    T_s, mu, s = standardize(T)
    X = cp.Variable((n, n), PSD=True)
    constraints = [X >= 0, cp.sum(X, axis=1) == 1, cp.trace(X) == k]
    problem = cp.Problem(cp.Maximize(cp.sum(cp.multiply(T_s, X))), constraints)
    options: dict[str, Any] = {}
    if solver == "scs":
        options = {"eps_abs": eps, "eps_rel": eps}
        if max_iters is not None:
            options["max_iters"] = max_iters
        if time_limit is not None:
            options["time_limit_secs"] = float(time_limit)
    else:
        if max_iters is not None:
            options["max_iter"] = max_iters
        if time_limit is not None:
            options["time_limit"] = float(time_limit)
    try:
        problem.solve(solver=SOLVERS[solver], verbose=verbose, **options)
    except cp.error.SolverError as exc:
        raise SolverError(f"{solver} failed on the grouping SDP (n={n}, k={k}): {exc}") from exc
    if problem.status != cp.OPTIMAL or X.value is None:
        raise SolverError(
            f"{solver} returned status {problem.status!r} on the grouping SDP (n={n}, k={k}); "
            f"only 'optimal' is accepted. Try method='lowrank', a larger max_iters or time_limit, or "
            f"solver='clarabel' for small n.")
    Xv = (X.value + X.value.T) / 2
    info = {
        "solver": solver,
        "status": problem.status,
        "relaxation_objective": float((T * Xv).sum()),
        "max_row_sum_violation": float(np.abs(Xv.sum(axis=1) - 1).max()),
        "trace_violation": float(abs(np.trace(Xv) - k)),
        "min_entry": float(Xv.min()),
        "min_eigenvalue": float(np.linalg.eigvalsh(Xv)[0]),
        "iterations": problem.solver_stats.num_iters,
    }
    return Xv, info
