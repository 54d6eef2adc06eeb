"""A scalable solver of the grouping SDP: non-negative Burer–Monteiro, X = UUᵀ with U ≥ 0.

    max ⟨T, X⟩  s.t.  X ⪰ 0,  X ≥ 0,  X·1 = 1,  tr X = k

With X = UUᵀ, U ∈ ℝ^{n×r}, U ≥ 0, both X ⪰ 0 and X ≥ 0 hold exactly. The row sums h = UUᵀ1 − 1
are handled by an augmented Lagrangian on the standardized T_s = (T − mu)/s (same maximizer,
see validation.standardize); the trace ‖U‖²_F = k and U ≥ 0 are kept exactly by projection
(clip, rescale). Inner steps are projected gradient steps with Barzilai–Borwein step sizes (see
_projected_gradient_al): one n×n by n×r product, O(n²r), per step, in torch, on CUDA when
available. (An earlier version drove the same
Lagrangian with scipy's L-BFGS-B; it was slower on the planted benchmark inputs, and better on
unstructured T.)

Start: k-means on a spectral embedding of T_s (randomized subspace iteration), refined by local
search on the partition (solver/local_search.py: task moves and split–merge moves), gives a
partition whose matrix X_P = Z diag(1/|G|) Zᵀ is exactly feasible; U₀ = [Z diag(|G|^{-1/2}), small noise],
r = 2k columns by default (rank headroom). The AL starts from a partition with the row-sum
multipliers that make it a first-order KKT point (partition_multipliers), so confirming an
already optimal partition takes one multiplier step (measured n = 2000: 40 gradient steps instead
of 303 from λ = 0, where ρ grew 154 → 19,700 and made later steps ill-conditioned).

Escape (see _escape_directions): a start partition that merges two true groups and splits a third
is a saddle of the factorized problem whose escape direction is second order (a new column must
grow from ~0), so gradient steps stay there (measured: n = 2000, k = 200 never left its spectral
start, ARI 0.981). After convergence, non-negative directions v with vᵀSv > μ‖v‖² (S the
Lagrangian's gradient in X, μ the trace multiplier) are put into free columns, a few AL steps are
taken (one multiplier step at a time, rounding after each), the result is rounded and, if the partition is better than the current one, the AL
restarts from it (at most max_escapes times). Measured at n = 2000: one escape, exact recovery.

Caveat: {UUᵀ : U ≥ 0} is the completely positive cone, a strict subset of {X ⪰ 0, X ≥ 0} for
n ≥ 5, and the factorized problem is non-convex. When the SDP optimum is a partition matrix
(well separated groups) this loses nothing; on unstructured T the value can be below the SDP
optimum (measured in session 2: percents for uniform random T). solver.cluster therefore polishes
the factor on the full cone for n ≤ full_cone.FULL_CONE_MAX_N (solver/full_cone.py).

Certificate (original T units): max_row_sum_violation, trace_violation, min_entry = 0 and
min_eigenvalue ≥ 0 (exact by construction), and feasible_objective: ⟨T, X_f⟩ of an exactly
feasible X_f obtained from X (see _feasible_objective), a certified lower bound on the optimum.
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from .grouping import partition_objective
from .local_search import refine
from .rounding import round_kmeans
from .validation import standardize



# Opt-in (product_dtype=torch.float32): the AL's T_s·ΔU products in float32, accumulated in
# float64. Measured in session 2 (before the ρ rule of _projected_gradient_al was fixed) on the
# planted benchmark, n = 2000: faster on seed 0 with the same partition, but the first AL did not
# settle on seed 1. Not re-measured under the new ρ rule; not the default.


# Diagnostics: when a list, each AL multiplier step appends a dict (ρ, violation, stationarity
# residual, inner steps, products, ...). Off (None) by default.
TRACE: list[dict[str, Any]] | None = None

# ρ never exceeds RHO_MAX_FACTOR × its initial value (a safeguard; with the rule below, measured
# n = 2000 seeds 0–2 stayed ≤ 32×, the old rule reached 4e9× on seed 1).
RHO_MAX_FACTOR = 1e3


def default_device() -> torch.device:
    """CUDA if available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _power(A: torch.Tensor, v: torch.Tensor, iters: int) -> float:
    """Rayleigh quotient after ``iters`` power iterations (dominant eigenvalue estimate)."""
    for _ in range(iters):
        v = A @ v
        v = v / torch.linalg.vector_norm(v)
    return float(v @ (A @ v))


def _lambda_min_estimate(T_s: torch.Tensor, g: torch.Generator, iters: int = 30) -> float:
    """Rough smallest eigenvalue of T_s: power iteration on ρI − T_s, ρ ≥ ‖T_s‖₂."""
    n = T_s.shape[0]
    v = torch.rand(n, generator=g, dtype=T_s.dtype).to(T_s.device)
    rho = float(T_s.abs().sum(dim=1).max())
    shifted = rho * torch.eye(n, dtype=T_s.dtype, device=T_s.device) - T_s
    return rho - _power(shifted, v, iters)


def spectral_init_labels(T_s: torch.Tensor, k: int, seed: int = 0, power_iters: int = 4,
                         n_init: int = 3) -> np.ndarray:
    """Partition from k-means on the top-k (algebraic) eigenvectors of T_s, scaled by √λ₊.

    The eigenvectors come from randomized subspace iteration on T_s + cI (c ≈ −λ_min(T_s), so
    that the largest algebraic eigenvalues are the largest in magnitude) followed by
    Rayleigh–Ritz; cost O(n²(k + 10)·power_iters).
    """
    n = T_s.shape[0]
    g = torch.Generator(device="cpu").manual_seed(seed)
    p = min(n, k + 10)
    c = max(0.0, -_lambda_min_estimate(T_s, g))
    Q = torch.randn(n, p, generator=g, dtype=T_s.dtype).to(T_s.device)
    for _ in range(power_iters):
        Q, _ = torch.linalg.qr(T_s @ Q + c * Q)
    H = Q.T @ (T_s @ Q)
    evals, evecs = torch.linalg.eigh((H + H.T) / 2)
    top = torch.argsort(evals, descending=True)[:k]
    emb = (Q @ evecs[:, top]) * evals[top].clamp_min(0).sqrt()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(emb.cpu().numpy())


def initial_factor(labels: np.ndarray, k: int, r: int, seed: int, dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor:
    """U₀ = [Z diag(|G|^{-1/2}), ε·uniform noise] (n×r), rescaled to ‖U‖²_F = k."""
    n = labels.shape[0]
    Z = torch.zeros(n, r, dtype=dtype)
    sizes = np.bincount(labels, minlength=k)
    Z[np.arange(n), labels] = torch.as_tensor(1.0 / np.sqrt(sizes[labels]), dtype=dtype)
    if r > k:
        g = torch.Generator(device="cpu").manual_seed(seed + 1)
        Z[:, k:] = 0.1 / math.sqrt(n * (r - k)) * torch.rand(n, r - k, generator=g, dtype=dtype)
    return (Z * math.sqrt(k) / torch.linalg.vector_norm(Z)).to(device)




def partition_multipliers(T_s: torch.Tensor, labels: np.ndarray, k: int) -> torch.Tensor:
    """Row-sum multipliers λ that make the partition factor U_P = Z diag(|G|^{-1/2}) a first-order
    KKT point of the factorized Lagrangian (a warm start for the augmented Lagrangian).

    On the support (i ∈ G): |G|λ_i + λ(G) = 2((T_s 1_G)_i − μ), which fixes λ given the trace
    multiplier μ; off the support (i ∉ G) the gradient must be ≥ 0: |G|λ_i + λ(G) ≥ 2(T_s 1_G)_i.
    Both sides fall with μ, so μ is the largest value satisfying the off-support inequalities
    (then ⟨S, X_P⟩ = kμ). One n×n by n×k product. Measured at n = 800 (planted): the AL from the
    partition start with these λ converged after 40 steps instead of 400 from λ = 0.
    """
    n = labels.shape[0]
    lab = torch.as_tensor(labels, device=T_s.device, dtype=torch.long)
    rows = torch.arange(n, device=T_s.device)
    Z = torch.zeros(n, k, dtype=T_s.dtype, device=T_s.device)
    Z[rows, lab] = 1.0
    m = Z.sum(dim=0)
    B = T_s @ Z                     # B[i, G] = (T_s 1_G)_i
    a = B[rows, lab]                # own group
    A = Z.T @ a                     # A_G = 1_Gᵀ T_s 1_G
    safe_m = m.clamp_min(1.0)
    mi, AH = safe_m[lab], A[lab]
    base = (2.0 * a - AH / mi) / mi  # λ_i at μ = 0; λ_i = base_i − μ/|H|
    bound = (safe_m[None, :] * base[:, None] + (A / safe_m)[None, :] - 2.0 * B) / (safe_m[None, :] / mi[:, None] + 1.0)
    bound[rows, lab] = math.inf
    bound[:, m == 0] = math.inf
    mu = float(bound.min()) if math.isfinite(float(bound.min())) else 0.0
    return base - mu / mi


def start_labels(T: np.ndarray, T_s: torch.Tensor, k: int, seed: int) -> np.ndarray:
    """The start partition: k-means on the randomized spectral embedding (one k-means run), then
    local_search.refine (task moves and split–merge moves on ⟨T, X_P⟩). On planted groups of random
    sizes (n = 2000, k = 200, seed 0) the embedding's partition had ARI 0.93 and the refined one
    was the planted partition, in 0.3 s; each merge-and-split left in the start would cost the
    factorized solver a saddle escape (module docstring)."""
    return refine(T, spectral_init_labels(T_s, k, seed, n_init=1), k)


def _project(U: torch.Tensor, k: int) -> torch.Tensor:
    """Exact projection onto {U ≥ 0, ‖U‖²_F = k}: clip negatives, rescale."""
    U = U.clamp_min(0.0)
    norm = torch.linalg.vector_norm(U)
    if float(norm) == 0.0:
        U = torch.ones_like(U)
        norm = torch.linalg.vector_norm(U)
    return U * (math.sqrt(k) / norm)


def _projected_gradient_al(T_s: torch.Tensor, U: torch.Tensor, k: int, tol: float, max_outer: int,
                           inner_iters: int, deadline: float | None,
                           lam: torch.Tensor | None = None, rho: float | None = None,
                           T_lo: torch.Tensor | None = None) -> tuple[torch.Tensor, bool, int, int, torch.Tensor, float]:
    """Augmented Lagrangian for the row sums, ‖U‖²_F = k and U ≥ 0 kept by projection.

    L(U, λ) = −⟨T_s, UUᵀ⟩ + λᵀc + (ρ/2)‖c‖², c = UUᵀ1 − 1, with
    ∇_U L = −2 T_s U + (λ + ρc)(Uᵀ1)ᵀ + 1 (Uᵀ(λ + ρc))ᵀ. Inner steps: projected gradient with
    Barzilai–Borwein step sizes and a sufficient-decrease backtracking safeguard; one product
    T_s U (O(n² r)) per accepted step. Stationarity is measured by a residual at a fixed reference
    step, ‖P(U − g/t) − U‖/√k with t = 2‖T_s‖_∞ (independent of ρ and of the BB step); an inner
    problem counts as solved when it is below tol. Stop when solved and the violation < tol;
    ρ doubles only when an inner problem was solved and the violation did not fall by 4×
    (at most RHO_MAX_FACTOR × the initial ρ). Returns (U, converged, outer, steps, λ, ρ).
    """
    n = U.shape[0]
    one = torch.ones(n, dtype=U.dtype, device=U.device)

    def product_new(U_new, U, TU):
        # T_s U_new; with T_lo (e.g. float32) as TU + T_lo (U_new − U), accumulated in U's dtype,
        # so the rounding error scales with the step, not with U (a float32 T_lo U_new made the
        # sufficient-decrease test fail near convergence: ρ grew to 6e5 at n = 2000).
        if T_lo is None:
            return T_s @ U_new
        return TU + (T_lo @ (U_new - U).to(T_lo.dtype)).to(U.dtype)

    if lam is None:
        lam = torch.zeros(n, dtype=U.dtype, device=U.device)
    rho0 = max(1.0, float(T_s.abs().sum(1).max()) / max(1, n // k))
    if rho is None:
        rho = rho0

    def value(U, TU):
        c = U @ (U.T @ one) - one
        return float(-(TU * U).sum() + lam @ c + 0.5 * rho * (c @ c)), c

    def gradient(U, TU, c):
        m = lam + rho * c
        return -2.0 * TU + torch.outer(m, U.T @ one) + torch.outer(one, U.T @ m)

    TU = T_s @ U
    val, c = value(U, TU)
    g = gradient(U, TU, c)
    t_scale = 2.0 * float(T_s.abs().sum(1).max())
    step = 1.0 / (t_scale + rho * n)
    ref_step = 1.0 / t_scale

    def residual(U, g):
        # first-order stationarity on {U ≥ 0, ‖U‖² = k} at a fixed reference step (independent of
        # ρ and of the BB step): ‖P(U − g/t_scale) − U‖ / ‖U‖
        return float(torch.linalg.vector_norm(_project(U - ref_step * g, k) - U)) / math.sqrt(k)

    prev_viol, moved, outer, iterations, converged = float(c.abs().max()), 1.0, 0, 0, False
    products = 0
    res = residual(U, g)
    for outer in range(1, max_outer + 1):
        it0, p0 = iterations, products
        for _ in range(inner_iters):
            iterations += 1
            for _bt in range(30):
                products += 1
                U_new = _project(U - step * g, k)
                TU_new = product_new(U_new, U, TU)
                val_new, c_new = value(U_new, TU_new)
                d = U_new - U
                bound = val + float((g * d).sum()) + float((d * d).sum()) / (2 * step) + 1e-12 * abs(val)
                if val_new <= bound:
                    break
                step *= 0.5
            g_new = gradient(U_new, TU_new, c_new)
            s_vec, y_vec = U_new - U, g_new - g
            sy = float((s_vec * y_vec).sum())
            step = float((s_vec * s_vec).sum()) / sy if sy > 1e-30 else step * 2.0
            step = min(max(step, 1e-12), 1e6)
            moved = float(torch.linalg.vector_norm(s_vec)) / max(float(torch.linalg.vector_norm(U)), 1e-30)
            U, TU, val, c, g = U_new, TU_new, val_new, c_new, g_new
            res = residual(U, g)
            if res < tol:
                break
        viol = float(c.abs().max())
        solved = res < tol
        if TRACE is not None:
            TRACE.append({"outer": outer, "rho": rho, "viol": viol, "moved": moved, "res": res,
                          "inner": iterations - it0, "products": products - p0,
                          "gnorm": float(torch.linalg.vector_norm(g)), "step": step,
                          "lam_max": float(lam.abs().max()), "val": val,
                          "t": time.perf_counter()})
        lam = lam + rho * c
        if viol < tol and solved:
            converged = True
            break
        # Raise ρ only after an inner problem actually solved to tolerance whose violation did not
        # fall 4×. (The old rule doubled ρ whenever the violation stalled: at large ρ the BB steps
        # shrink, the inner loop stopped after one tiny step, the violation stalled, ρ doubled
        # again: n = 2000 seed 1, ρ 153 → 6.6e11, |λ| 11 → 7e6, no escape accepted.)
        if solved and viol > 0.25 * prev_viol and rho < RHO_MAX_FACTOR * rho0:
            rho *= 2.0
        prev_viol = viol
        if T_lo is not None:
            TU = T_s @ U  # refresh the accumulated product once per multiplier step
        val, c = value(U, TU)
        g = gradient(U, TU, c)
        if deadline is not None and time.perf_counter() > deadline:
            break
    return U, converged, outer, iterations, lam, rho


def _escape_directions(T_s: torch.Tensor, U: torch.Tensor, lam: torch.Tensor, k: int,
                       max_group: int = 400) -> list[tuple[float, torch.Tensor]]:
    """Non-negative directions v (‖v‖ = 1) of positive curvature at a stationary point U.

    With the row-sum multipliers λ, S = T_s − ½(λ1ᵀ + 1λᵀ) and μ = ⟨S, UUᵀ⟩/k (the trace
    multiplier), a KKT point of max ⟨T_s, X⟩ over completely positive X has vᵀSv ≤ μ‖v‖² for all
    v ≥ 0. A partition-like U whose groups merge two true groups violates this along the indicator
    of one of them, but the gain of adding a column εv is O(ε²), so gradient steps from a
    near-zero column take very long to see it (measured: n = 2000 stayed at its start). Candidates:
    for each current group G (rows by their largest column), the positive and negative parts of the
    top two eigenvectors of S_GG; returned as (vᵀSv − μ, v), best first, only those > 0.
    """
    n = U.shape[0]
    S_U = T_s @ U - 0.5 * (torch.outer(lam, U.sum(dim=0)) + torch.outer(torch.ones_like(lam), lam @ U))
    mu_t = float((S_U * U).sum()) / k
    labels = U.argmax(dim=1).cpu().numpy()
    out: list[tuple[float, torch.Tensor]] = []
    for g in np.unique(labels):
        idx = torch.as_tensor(np.flatnonzero(labels == g), device=U.device)
        if not 2 <= len(idx) <= max_group:
            continue
        S_G = T_s[idx][:, idx] - 0.5 * (lam[idx, None] + lam[None, idx])
        _, V = torch.linalg.eigh(S_G)
        for j in range(1, min(3, len(idx)) ):
            for sign in (1.0, -1.0):
                w = (sign * V[:, -j]).clamp_min(0.0)
                nw = float(torch.linalg.vector_norm(w))
                if nw == 0.0:
                    continue
                w = w / nw
                q = float(w @ (S_G @ w)) - mu_t
                if q > 0:
                    v = torch.zeros(n, dtype=U.dtype, device=U.device)
                    v[idx] = w
                    out.append((q, v))
    out.sort(key=lambda t: -t[0])
    return out


def _inject(U: torch.Tensor, directions: list[tuple[float, torch.Tensor]], k: int,
            weight: float = 0.25) -> torch.Tensor | None:
    """Put √weight·v into the columns of U with the smallest norms (free columns, ‖u‖² < 0.01);
    None if there is no free column."""
    norms = (U * U).sum(dim=0)
    free = torch.argsort(norms)
    m = min(len(directions), int((norms < 1e-2).sum()))
    if m == 0:
        return None
    U = U.clone()
    for i in range(m):
        U[:, free[i]] = math.sqrt(weight) * directions[i][1]
    return _project(U, k)


def solve_lowrank(T: np.ndarray, k: int, rank: int | None = None, seed: int = 0,
                  init_labels: np.ndarray | None = None, tol: float = 1e-5,
                  max_outer: int = 50, inner_iters: int = 40,
                  time_limit: float | None = None, max_escapes: int = 3,
                  escape_min_gain: float = 1.0, escape_outer: int = 1,
                  device: str | torch.device | None = None,
                  dtype: torch.dtype = torch.float64,
                  product_dtype: torch.dtype | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Solve the SDP as X = UUᵀ, U ≥ 0 (see module docstring); return (U as numpy n×r, info).

    rank: r (default min(n, 2k)); tol: target for the row-sum and trace violations and the
    relative objective change that ends the loop; max_outer / inner_iters: multiplier steps /
    projected-gradient steps per multiplier step (structured T converges in a few multiplier
    steps; on T without group structure the AL creeps on to any cap: at n = 500, uniform random
    T, seeds 0–2, a cap of 50 instead of 200 took 3–5× less time for rounded partitions within
    ±1.1% of the longer runs', 0.3% better on average: diagnostic runs, session 4);
    time_limit: seconds, checked between multiplier steps; max_escapes / escape_min_gain / escape_outer: saddle escapes (module docstring): at
    most this many, only if the best direction's vᵀSv − μ exceeds escape_min_gain (units of the
    standardized T), at most escape_outer multiplier steps, rounding after each (default 1: with
    the refined start, an escape that the first step does not turn into a better partition rarely
    pays; measured on planted power-law group sizes, n = 800, where splitting a large group
    costs nothing in expectation and many directions qualify: 5 steps took the solve from 5 s to
    26 s for no better partition, 1 step to 11 s). info["escapes"]
    counts the accepted ones.
    product_dtype: dtype of the n×n products inside the AL (None: ``dtype``; float32 is an
    experimental option, see the note above default_device); each step adds T_s(U_new − U) in that dtype to the previous
    product in ``dtype``, and the product is recomputed in ``dtype`` every multiplier step and for
    the certificate.
    info: "relaxation_objective" (⟨T, UUᵀ⟩ on the original T), "converged", counts, and the
    certificate fields of the module docstring.
    """
    start = time.perf_counter()
    deadline = None if time_limit is None else start + time_limit
    n = T.shape[0]
    r = int(rank) if rank is not None else min(n, 2 * k)
    if not k <= r <= n:
        raise ValueError(f"rank must be between k={k} and n={n}; got {r}.")
    dev = torch.device(device) if device is not None else default_device()
    T_np, mu, s = standardize(T)
    T_s = torch.as_tensor(T_np, dtype=dtype, device=dev)
    T_lo = None if product_dtype is None or product_dtype == dtype else T_s.to(product_dtype)
    if init_labels is None:
        init_labels = start_labels(T, T_s, k, seed)
    current = np.asarray(init_labels)
    U0 = initial_factor(current, k, r, seed, dtype, dev)
    U, converged, outer, iterations, lam, _ = _projected_gradient_al(
        T_s, U0, k, tol, max_outer, inner_iters, deadline,
        lam=partition_multipliers(T_s, current, k), T_lo=T_lo)
    escapes = 0
    for _ in range(max_escapes):
        if deadline is not None and time.perf_counter() > deadline:
            break
        old_value = partition_objective(T, current)
        # The AL may itself have left the start partition (it is not stopped at a non-stationary
        # start any more): if U's own groups (largest column per row, O(nr); k-means rounding if
        # that does not give k groups) form a better partition, restart from it (counted as an
        # escape) without an injection.
        labels = np.unique(U.argmax(dim=1).cpu().numpy(), return_inverse=True)[1].reshape(-1)
        if int(labels.max()) + 1 != k:  # not partition-like: round (k-means) instead
            labels = round_kmeans(U.cpu().numpy(), T, k, n_init=1, seed=seed)
        labels = refine(T, labels, k)
        improved = partition_objective(T, labels) > old_value + 1e-9 * abs(old_value)
        directions = [] if improved else _escape_directions(T_s, U, lam, k)
        if not improved and (not directions or directions[0][0] < escape_min_gain):
            break
        U_try = None if improved else _inject(
            U, [d for d in directions if d[0] >= 0.5 * directions[0][0]], k)
        if not improved and U_try is None:
            break
        # One multiplier step at a time, rounding after each: stop at the first better partition
        # (measured at n = 2000: found after the first of escape_outer = 5, 40 steps instead of 200).
        V, lam_v, rho_v = U_try, lam.clone(), None
        for _ in range(0 if improved else escape_outer):
            V, _, o_v, it_v, lam_v, rho_v = _projected_gradient_al(
                T_s, V, k, tol, 1, inner_iters, deadline, lam=lam_v, rho=rho_v, T_lo=T_lo)
            outer, iterations = outer + o_v, iterations + it_v
            labels = refine(T, round_kmeans(V.cpu().numpy(), T, k, n_init=1, seed=seed), k)
            if partition_objective(T, labels) > old_value + 1e-9 * abs(old_value):
                improved = True
                break
            if deadline is not None and time.perf_counter() > deadline:
                break
        if not improved:
            break
        W, conv_w, o_f, it_f, lam_w, _ = _projected_gradient_al(
            T_s, initial_factor(labels, k, r, seed, dtype, dev), k, tol, max_outer, inner_iters, deadline,
            lam=partition_multipliers(T_s, labels, k), T_lo=T_lo)
        outer, iterations = outer + o_f, iterations + it_f
        if _certified(T_s, W, k) <= _certified(T_s, U, k):
            break
        U, converged, lam, current, escapes = W, conv_w, lam_w, labels, escapes + 1
    rowsum = U @ U.sum(dim=0)
    quad = float(((T_s @ U) * U).sum())
    info: dict[str, Any] = {
        "rank": r,
        "outer_iterations": outer,
        "escapes": escapes,
        "iterations": iterations,
        "converged": converged,
        "device": str(dev),
        "relaxation_objective": s * quad + mu * float(rowsum.sum()),
        "max_row_sum_violation": float((rowsum - 1).abs().max()),
        "trace_violation": abs(float((U * U).sum()) - k),
        "min_entry": 0.0,
        "min_eigenvalue": 0.0,
        "psd_and_nonnegative": "exact: X = UUᵀ with U ≥ 0",
    }
    info.update(_feasible_objective(T_s, U, k, quad, mu, s))
    info["solve_seconds"] = time.perf_counter() - start
    return U.cpu().numpy(), info


def _certified(T_s: torch.Tensor, U: torch.Tensor, k: int) -> float:
    """⟨T_s, X_f⟩ of the exactly feasible X_f built from UUᵀ (−inf if none): compares two points."""
    quad = float(((T_s @ U) * U).sum())
    return _feasible_objective(T_s, U, k, quad, 0.0, 1.0).get("feasible_objective", -math.inf)


def _feasible_objective(T_s: torch.Tensor, U: torch.Tensor, k: int, quad: float, mu: float,
                        s: float) -> dict[str, Any]:
    """⟨T, X_f⟩ for an exactly feasible X_f built from X = UUᵀ (a lower bound on the SDP).

    Symmetric Sinkhorn d ← √(d / (Xd)) gives D X D with row sums 1 (still PSD and ≥ 0); mixing
    with I (trace n, rows 1) or 11ᵀ/n (trace 1, rows 1) restores trace k. O(nr) per step plus
    one product with T_s.
    """
    n = T_s.shape[0]
    if not bool(((U @ U.sum(dim=0)) > 0).all()):
        return {}
    d = torch.ones(n, dtype=U.dtype, device=U.device)
    for _ in range(1000):
        d = torch.sqrt(d / (U @ (U.T @ d)))
        if float((d * (U @ (U.T @ d)) - 1).abs().max()) < 1e-13:
            break
    V = d.unsqueeze(1) * U
    if float((V @ V.sum(dim=0) - 1).abs().max()) > 1e-10:
        return {}
    t = float((V * V).sum())
    q = float(((T_s @ V) * V).sum())
    if t < k:
        theta, other = (n - k) / (n - t), float(torch.trace(T_s))
    elif t > k:
        theta, other = (k - 1) / (t - 1), float(T_s.sum()) / n
    else:
        theta, other = 1.0, 0.0
    return {"feasible_objective": s * (theta * q + (1 - theta) * other) + mu * n,
            "feasible_mix_weight": theta}
