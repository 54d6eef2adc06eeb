"""Polish on the full doubly-nonnegative cone: an ADMM on the n×n X, for small n.

    max ⟨T, X⟩  s.t.  X ⪰ 0,  X ≥ 0,  A(X) = b   (A(X) = (sym(X)·1, tr X), b = (1, k))

solve_lowrank keeps X = UUᵀ with U ≥ 0, i.e. X completely positive, a strict subset of
{X ⪰ 0, X ≥ 0}; on unstructured T its value stays below the SDP optimum (uniform random T,
seed 1: 1.8% at n = 60, 10% at n = 200). This module closes that gap for n ≤ FULL_CONE_MAX_N by
solving the SDP itself with a dual ADMM (Wen, Goldfarb, Yin, "Alternating direction augmented
Lagrangian methods for semidefinite programming", Math. Prog. Comp. 2010, the variant with
X ≥ 0), on the standardized T_s (validation.standardize), written as min ⟨C, X⟩ with C = −T_s:

    dual:  max bᵀy  s.t.  A*(y) + S + Z = C,  S ⪰ 0,  Z ≥ 0,   A*(λ, m) = (λ1ᵀ + 1λᵀ)/2 + mI.

One iteration: y from the (n+1)×(n+1) system AA* y = μ(b − A(X)) − A(S + Z − C) (closed form,
O(n)), Z = max(0, C − A*y − S − μX), V = C − A*y − Z − μX, one eigendecomposition of V:
S = Π_⪰(V), X⁺ = (S − V)/μ = −Π_⪯(V)/μ (so every X⁺ is PSD by construction), then the
over-relaxed multiplier step X ← (1 − γ)X + γX⁺. μ is rebalanced between the primal and dual
residuals. Cost: one n×n eigh and one n×n×n product per iteration (n = 200: 5–9 ms on one loaded core).
The primal start is X₀ = UUᵀ from solve_lowrank (the dual starts at 0). Measured: the primal
warm start alone did not shorten the run (same iteration counts from kI/n); the initial penalty
did (MU0 below). A dual warm start (from solve_lowrank's row-sum multipliers) was not tried.

Certificate, computed from the iterate (standardized units inside, original T units reported):

- upper bound (dual): for any y and PSD S, with R = C − A*y − S and E = min(R, 0), every feasible
  X has ⟨C, X⟩ = bᵀy + ⟨S, X⟩ + ⟨max(R, 0), X⟩ + ⟨E, X⟩ ≥ bᵀy + k·min(0, λ_min(S)) + Σ_i min_j E_ij
  (each row of a feasible X is a probability vector, tr X = k). So the optimum of the max problem
  is ≤ −(that), whatever the accuracy of y and S (λ_min(S) is bounded by the eigh rounding).
- lower bound (primal, an exactly feasible point X_f): X⁺'s negative part N = max(−X⁺, 0) is
  covered by X⁺ + N + diag(N·1) (PSD: N + diag(N·1) is diagonally dominant; ≥ 0), then symmetric
  Sinkhorn scaling D X D restores the row sums (PSD and ≥ 0 are kept) and a mix with I or 11ᵀ/n
  restores the trace; ⟨T, X_f⟩ is attained by a feasible X_f, so it is ≤ the optimum. It is looser
  than the upper bound: the mix costs ~‖N‖₁·(objective per unit trace), and ‖N‖₁ (thousands of
  entries ~1e-7) falls slowly (measured: planted n = 200, k = 15 ≠ 20: 2,600 iterations to a
  1e-4 gap between the two bounds; the upper bound and ⟨T, X⁺⟩ agreed to 1e-5 after 200).

Stop (checked every CHECK_EVERY iterations): X⁺'s largest row-sum, trace and negative-entry
violation ≤ feas_tol and |upper bound − ⟨T, X⁺⟩| ≤ gap_tol·(1 + |⟨T, X⁺⟩|) (standardized). So the
returned relaxation objective ⟨T, X⁺⟩ (X⁺ ⪰ 0 by construction, the other constraints to feas_tol)
is never more than the gap tolerance above the certified upper bound, hence above the optimum.
Reported: X⁺'s violations and smallest eigenvalue, feasible_objective ≤ optimum ≤ upper_bound.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from .validation import standardize

# Largest n for which solver.cluster(method="lowrank") polishes on the full cone by default: the
# cost is an n×n eigendecomposition per iteration and n² memory (measured, one core: n = 200,
# 5–9 ms per iteration, about 100 iterations; n = 300 about twice that per iteration).
FULL_CONE_MAX_N = 300

# Default stop: |upper bound − ⟨T_s, X⟩| ≤ GAP_TOL·(1 + |⟨T_s, X⟩|) in the standardized units
# (measured, uniform random T, seed 1, n = 200: 70 iterations, 0.6 s, objective 2e-6 above SCS's).
GAP_TOL = 1e-4

# Default stop on feasibility: the returned X's largest row-sum violation, trace violation and
# negative entry (absolute; X's entries are ~k/n) are ≤ FEASIBILITY_TOL (X ⪰ 0 by construction).
# solve_lowrank's default tol is the same.
FEASIBILITY_TOL = 1e-4

# Stopping test (the dual bound, the violations) every this many iterations.
CHECK_EVERY = 10

# Initial penalty μ = MU0·‖C‖_F/‖b‖ (measured, uniform random and planted T, n = 60 and 200:
# MU0 = 0.5 … 4 took 180–440 iterations to a 1e-4 gap on random T, 10–16 took 80–90).
MU0 = 12.0
# μ ← μ·FACTOR (or /FACTOR) after more than STREAK iterations in a row where the primal (dual)
# residual exceeds RATIO times the other (measured: switching it off changed little).
STREAK, FACTOR, RATIO = 20, 1.5, 10.0

# Diagnostics: when a list, each check appends a dict (iteration, objective, bound, residuals, μ).
TRACE: list[dict[str, Any]] | None = None


def _affine(X: torch.Tensor) -> torch.Tensor:
    """A(X) = ((X·1 + Xᵀ·1)/2, tr X)."""
    return torch.cat([(X.sum(dim=1) + X.sum(dim=0)) / 2, torch.trace(X).reshape(1)])


def _adjoint(y: torch.Tensor) -> torch.Tensor:
    """A*(λ, m) = (λ1ᵀ + 1λᵀ)/2 + m I."""
    n = y.shape[0] - 1
    lam = y[:n]
    out = (lam[:, None] + lam[None, :]) / 2
    out.diagonal().add_(y[n])
    return out


def _solve_normal(r: torch.Tensor) -> torch.Tensor:
    """y with A(A*(y)) = r. A A*(λ, m) = ((n/2)λ + (1ᵀλ/2)1 + m1, 1ᵀλ + n m); solved in closed form
    through σ = 1ᵀλ: the first block summed gives n σ + n m = Σ r_λ, with the trace row σ + n m = r_m."""
    n = r.shape[0] - 1
    r_lam, r_m = r[:n], r[n]
    total = r_lam.sum()
    # n σ + n m = total, σ + n m = r_m  ⇒  σ = (total − r_m)/(n − 1), m = (r_m − σ)/n
    sigma = (total - r_m) / (n - 1)
    m = (r_m - sigma) / n
    lam = (r_lam - sigma / 2 - m) * (2.0 / n)
    return torch.cat([lam, m.reshape(1)])


def feasible_point(X: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    """An exactly feasible X_f near a PSD X (see module docstring); returns (X_f, trace mix weight).

    Requires n ≥ 2 and 1 ≤ k ≤ n. Raises ValueError when the Sinkhorn scaling does not converge
    (a row of X + N + diag(N·1) that is zero)."""
    n = X.shape[0]
    N = (-X).clamp_min(0.0)
    Y = X + N
    Y.diagonal().add_(N.sum(dim=1))
    Y = (Y + Y.T) / 2
    d = torch.ones(n, dtype=X.dtype, device=X.device)
    for _ in range(2000):
        d = torch.sqrt(d / (Y @ d))
        if float((d * (Y @ d) - 1).abs().max()) < 1e-13:
            break
    Y = d[:, None] * Y * d[None, :]
    if not bool(torch.isfinite(Y).all()) or float((Y.sum(dim=1) - 1).abs().max()) > 1e-10:
        raise ValueError("Sinkhorn scaling of the polished X did not converge.")
    t = float(torch.trace(Y))
    if t < k:
        theta = (n - k) / (n - t)
        Y = theta * Y + (1 - theta) * torch.eye(n, dtype=X.dtype, device=X.device)
    elif t > k:
        theta = (k - 1) / (t - 1)
        Y = theta * Y + (1 - theta) / n
    else:
        theta = 1.0
    return Y, theta


def dual_upper_bound(C: torch.Tensor, y: torch.Tensor, S: torch.Tensor, k: int,
                     s_min_eig: float) -> float:
    """Upper bound on max ⟨−C, X⟩ over the feasible set from any y and PSD-up-to-s_min_eig S
    (module docstring): −(bᵀy + k·min(0, s_min_eig) + Σ_i min(0, min_j R_ij)), R = C − A*y − S."""
    n = C.shape[0]
    R = C - _adjoint(y) - S
    row_min = R.min(dim=1).values.clamp_max(0.0)
    dobj = float(y[:n].sum()) + k * float(y[n])
    return -(dobj + k * min(0.0, s_min_eig) + float(row_min.sum()))


def _violation(X: torch.Tensor, k: int) -> float:
    """Largest of the row-sum violation, the trace violation and the most negative entry of X."""
    return max(float((X.sum(dim=1) - 1).abs().max()), abs(float(torch.trace(X)) - k),
               float((-X).clamp_min(0.0).max()))


def solve_full_cone(T: np.ndarray, k: int, X0: np.ndarray | None = None, gap_tol: float = GAP_TOL,
                    feas_tol: float = FEASIBILITY_TOL, known_feasible: float | None = None,
                    max_iter: int = 3000, time_limit: float | None = None, gamma: float = 1.6,
                    device: str | torch.device | None = None,
                    dtype: torch.dtype = torch.float64) -> tuple[np.ndarray, dict[str, Any]]:
    """Solve the SDP on the full cone by the dual ADMM of the module docstring; return (X, info).

    X0: primal start (e.g. UUᵀ from solve_lowrank; default kI/n). gap_tol, feas_tol: the stop of
    the module docstring. known_feasible: ⟨T, X_f⟩ of an exactly feasible X_f known to the caller
    (original T units; e.g. solve_lowrank's feasible_objective); the loop also stops, with
    info["stopped_by"] = "known_feasible", once the dual upper bound is within gap_tol of it (that
    X_f is then certified near-optimal; X⁺ itself may still be short of feas_tol). max_iter /
    time_limit (seconds): other stops (then info["converged"] is False; the bounds still hold). Returns the last PSD iterate X⁺ and info:
    "relaxation_objective" = ⟨T, X⁺⟩; "max_row_sum_violation", "trace_violation", "min_entry",
    "min_eigenvalue" of X⁺ and "feasibility_tol"; "feasible_objective" ≤ optimum ≤ "upper_bound"
    (original T units); "upper_bound_gap" (the stopping quantity), "certified_gap"
    ((upper − feasible)/(1 + |objective|), standardized), "stopped_by" ("gap", "known_feasible",
    "time_limit" or "max_iter") and, with known_feasible, "known_feasible_gap"
    ((upper − known_feasible)/(1 + |known_feasible|), standardized).
    """
    start = time.perf_counter()
    n = T.shape[0]
    if not 2 <= n or not 1 <= k <= n:
        raise ValueError(f"need n ≥ 2 and 1 ≤ k ≤ n; got n={n}, k={k}.")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    T_np, mu_t, s_t = standardize(T)
    known = None if known_feasible is None else (known_feasible - mu_t * n) / s_t  # standardized
    C = -torch.as_tensor(T_np, dtype=dtype, device=dev)
    b = torch.ones(n + 1, dtype=dtype, device=dev)
    b[n] = float(k)
    X = (torch.as_tensor(X0, dtype=dtype, device=dev) if X0 is not None
         else (k / n) * torch.eye(n, dtype=dtype, device=dev))
    X = (X + X.T) / 2
    S = torch.zeros_like(C)
    Z = torch.zeros_like(C)
    y = torch.zeros(n + 1, dtype=dtype, device=dev)
    norm_b, norm_c = float(torch.linalg.vector_norm(b)), float(torch.linalg.vector_norm(C))
    mu = MU0 * norm_c / norm_b
    streak_p = streak_d = 0
    X_plus, s_min = X, 0.0
    converged, stopped_by, it = False, "max_iter", 0
    for it in range(1, max_iter + 1):
        y = _solve_normal(mu * (b - _affine(X)) - _affine(S + Z - C))
        Ay = _adjoint(y)
        Z = (C - Ay - S - mu * X).clamp_min(0.0)
        V = C - Ay - Z - mu * X
        V = (V + V.T) / 2
        w, Q = torch.linalg.eigh(V)
        neg = w < 0
        Qn = Q[:, neg]
        X_plus = -(Qn * w[neg]) @ Qn.T / mu
        S = V + mu * X_plus
        # S = Q diag(max(w, 0)) Qᵀ up to rounding; its eigenvalue error is ~ n·eps·max|w|
        s_min = -n * 4e-16 * float(w.abs().max())
        dres = mu * float(torch.linalg.vector_norm(X_plus - X)) / (1 + norm_c)
        X = (1 - gamma) * X + gamma * X_plus
        pres = (float(torch.linalg.vector_norm(_affine(X_plus) - b))
                + float(torch.linalg.vector_norm(X_plus.clamp_max(0.0)))) / (1 + norm_b)
        if it % CHECK_EVERY == 0 or it == max_iter:
            obj = float((-C * X_plus).sum())
            upper = dual_upper_bound(C, y, S, k, s_min)
            viol = _violation(X_plus, k)
            gap = abs(upper - obj) / (1 + abs(obj))
            if TRACE is not None:
                TRACE.append({"it": it, "obj": obj, "upper": upper, "gap": gap, "viol": viol,
                              "pres": pres, "dres": dres, "mu": mu})
            if viol <= feas_tol and gap <= gap_tol:
                converged, stopped_by = True, "gap"
                break
            if known is not None and upper - known <= gap_tol * (1 + abs(known)):
                converged, stopped_by = True, "known_feasible"
                break
            if time_limit is not None and time.perf_counter() - start > time_limit:
                stopped_by = "time_limit"
                break
        # μ: more weight on the side whose residual lags (streaks of 10× imbalance)
        if pres > RATIO * dres:
            streak_p, streak_d = streak_p + 1, 0
        elif dres > RATIO * pres:
            streak_d, streak_p = streak_d + 1, 0
        if streak_p > STREAK:
            mu, streak_p = mu * FACTOR, 0
        elif streak_d > STREAK:
            mu, streak_d = mu / FACTOR, 0
    obj = float((-C * X_plus).sum())
    upper = dual_upper_bound(C, y, S, k, s_min)
    try:
        X_f, theta = feasible_point(X_plus, k)
        lower = float((-C * X_f).sum())
    except ValueError:
        lower, theta = -math.inf, math.nan
    T_t = torch.as_tensor(T, dtype=dtype, device=dev)
    rows = X_plus.sum(dim=1)
    info: dict[str, Any] = {
        "polish": "full_cone_admm",
        "iterations": it,
        "converged": converged,
        "stopped_by": stopped_by,
        "device": str(dev),
        "relaxation_objective": float((T_t * X_plus).sum()),
        "max_row_sum_violation": float((rows - 1).abs().max()),
        "trace_violation": abs(float(torch.trace(X_plus)) - k),
        "min_entry": float(X_plus.min()),
        "min_eigenvalue": float(torch.linalg.eigvalsh(X_plus)[0]),
        "feasibility_tol": feas_tol,
        "feasible_objective": s_t * lower + mu_t * n,
        "feasible_mix_weight": theta,
        "upper_bound": s_t * upper + mu_t * n,
        "upper_bound_gap": abs(upper - obj) / (1 + abs(obj)),
        "certified_gap": (upper - lower) / (1 + abs(obj)),
        "gap_tol": gap_tol,
        "penalty": mu,
    }
    if known is not None:
        info["known_feasible_gap"] = (upper - known) / (1 + abs(known))
    info["solve_seconds"] = time.perf_counter() - start
    return X_plus.cpu().numpy(), info
