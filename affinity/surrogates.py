"""Linearized fine-tuning on task subsets, fitted for many subsets at once.

For a subset S the fine-tuned model is approximated by f(x; θ* + P w) ≈ f(x; θ*) + g̃(x)ᵀ w,
with g̃ the projected gradient. w minimizes

    F_S(w) = Σ_{t∈S} (1/|S|) · mean_{r ∈ train(t)} ℓ_t(y_r, f_r + g̃_rᵀ w) + (λ/2) ‖w‖²

with ℓ the logistic loss on logits (binary tasks) or the squared error (regression): an
L2-penalized logistic (ridge) regression with the base output as a fixed offset, weighting the
tasks equally as base training does.

Solver: F_S is strictly convex. Subsets are fitted in batches by a damped quasi-Newton method
whose step matrix is the Hessian at the start, H_S(0) = Σ_{t∈S} (1/|S|) H_t + λI, assembled
from per-task matrices H_t = mean_{r∈train(t)} ℓ''(f_r) g̃_r g̃_rᵀ computed once for all
subsets (a subset costs |S| additions of d × d matrices and one Cholesky factorization instead
of a pass over its rows per iteration). Each iteration then costs O(rows · d); the fitted
w stays where the curvature barely changes, so convergence is fast, and after ``refresh_after``
iterations the exact Hessian is used (full Newton) for the subsets still not converged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class PaddedSubsets:
    """Per-subset row indices padded to one length; weight 0 marks padding."""

    index: torch.Tensor  # (B, R) long
    weight: torch.Tensor  # (B, R) float
    position: torch.Tensor  # (B, R) long, position of the row's task within its subset


def pad_subset_rows(subsets: list[np.ndarray], task_rows: list[np.ndarray], device: torch.device,
                    dtype: torch.dtype, weighted: bool = True) -> PaddedSubsets:
    """Gather the pair indices of every task of each subset; weights 1/(|S|·n_t) if ``weighted``."""
    per_subset = []
    for s in subsets:
        idx = [task_rows[t] for t in s]
        w = [np.full(len(r), 1.0 / (len(s) * max(len(r), 1))) for r in idx]
        pos = [np.full(len(r), k) for k, r in enumerate(idx)]
        per_subset.append((np.concatenate(idx), np.concatenate(w), np.concatenate(pos)))
    width = max(len(i) for i, _, _ in per_subset)
    index = np.zeros((len(subsets), width), dtype=np.int64)
    weight = np.zeros((len(subsets), width))
    position = np.zeros((len(subsets), width), dtype=np.int64)
    for b, (i, w, p) in enumerate(per_subset):
        index[b, :len(i)], weight[b, :len(i)], position[b, :len(i)] = i, (w if weighted else 1.0), p
    return PaddedSubsets(torch.as_tensor(index, device=device), torch.as_tensor(weight, device=device, dtype=dtype),
                         torch.as_tensor(position, device=device))


def _loss_derivatives(z: torch.Tensor, y: torch.Tensor, binary: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Loss, first and second derivative with respect to the output z."""
    s = torch.sigmoid(z)
    logistic = torch.nn.functional.softplus(z) - y * z
    loss = torch.where(binary, logistic, (z - y) ** 2)
    d1 = torch.where(binary, s - y, 2.0 * (z - y))
    d2 = torch.where(binary, s * (1.0 - s), torch.full_like(z, 2.0))
    return loss, d1, d2


def surrogate_objective(w: torch.Tensor, G: torch.Tensor, f: torch.Tensor, y: torch.Tensor, binary: torch.Tensor,
                        weight: torch.Tensor, l2: float) -> torch.Tensor:
    """F_S(w) for a batch: ``G`` (B, R, d), ``f``/``y``/``binary``/``weight`` (B, R), ``w`` (B, d)."""
    z = f + torch.einsum("brd,bd->br", G, w)
    loss, _, _ = _loss_derivatives(z, y, binary)
    return (weight * loss).sum(1) + 0.5 * l2 * (w * w).sum(1)


def task_hessians(features: torch.Tensor, base_output: torch.Tensor, labels: torch.Tensor, binary: torch.Tensor,
                  task_rows: list[np.ndarray]) -> torch.Tensor:
    """H_t = mean over task t's rows of ℓ''(f_r) g̃_r g̃_rᵀ, the per-task Hessian at w = 0: (tasks, d, d)."""
    d = features.shape[1]
    out = torch.zeros(len(task_rows), d, d, dtype=features.dtype, device=features.device)
    for t, rows in enumerate(task_rows):
        if len(rows) == 0:
            continue
        idx = torch.as_tensor(rows, device=features.device)
        G = features[idx]
        _, _, d2 = _loss_derivatives(base_output[idx], labels[idx], binary[idx])
        out[t] = (G * (d2 / len(rows))[:, None]).T @ G
    return out


def subset_hessians(hessians: torch.Tensor, subsets: list[tuple[int, ...]]) -> torch.Tensor:
    """H_S(0) without the penalty: Σ_{t∈S} H_t / |S| for each subset: (B, d, d)."""
    out = torch.empty(len(subsets), *hessians.shape[1:], dtype=hessians.dtype, device=hessians.device)
    for b, s in enumerate(subsets):
        out[b] = hessians[list(s)].sum(0) / len(s)
    return out


def fit_batch(G: torch.Tensor, f: torch.Tensor, y: torch.Tensor, binary: torch.Tensor, weight: torch.Tensor,
              l2: float, H0: torch.Tensor | None = None, max_iter: int = 100, tol: float = 1e-13,
              refresh_after: int = 20) -> tuple[torch.Tensor, int]:
    """Minimize F_S for every subset of the batch; returns (w, iterations).

    ``H0`` (B, d, d) is the unpenalized Hessian at w = 0 (computed from ``G`` when not given).
    Steps use it as a fixed metric; after ``refresh_after`` iterations the exact Hessian is used.
    """
    B, _, d = G.shape
    w = torch.zeros(B, d, dtype=G.dtype, device=G.device)
    eye = torch.eye(d, dtype=G.dtype, device=G.device)
    if H0 is None:
        _, _, d2 = _loss_derivatives(f, y, binary)
        H0 = torch.einsum("brd,br,bre->bde", G, weight * d2, G)
    L0, _ = torch.linalg.cholesky_ex(H0 + l2 * eye)
    obj = surrogate_objective(w, G, f, y, binary, weight, l2)
    it = 0
    for it in range(1, max_iter + 1):
        z = f + torch.einsum("brd,bd->br", G, w)
        _, d1, d2 = _loss_derivatives(z, y, binary)
        g = torch.einsum("brd,br->bd", G, weight * d1) + l2 * w
        if it > refresh_after:
            H = torch.einsum("brd,br,bre->bde", G, weight * d2, G) + l2 * eye
            L, _ = torch.linalg.cholesky_ex(H)
        else:
            L = L0
        step = torch.cholesky_solve(g.unsqueeze(-1), L).squeeze(-1)
        decrement = (g * step).sum(1)  # Newton decrement², ≥ 0
        if float(decrement.max()) <= tol * max(1.0, float(obj.abs().max())):
            break
        # Backtracking (Armijo) per subset.
        alpha = torch.ones(B, dtype=G.dtype, device=G.device)
        active = torch.ones(B, dtype=torch.bool, device=G.device)
        new_w, new_obj = w, obj
        for _ in range(30):
            cand = w - alpha[:, None] * step
            cand_obj = surrogate_objective(cand, G, f, y, binary, weight, l2)
            ok = cand_obj <= obj - 1e-4 * alpha * decrement
            take = active & ok
            new_w = torch.where(take[:, None], cand, new_w)
            new_obj = torch.where(take, cand_obj, new_obj)
            active = active & ~ok
            if not bool(active.any()):
                break
            alpha = torch.where(active, alpha * 0.5, alpha)
        w, obj = new_w, new_obj
    return w, it


def fit_subsets(features: torch.Tensor, base_output: torch.Tensor, labels: torch.Tensor, binary: torch.Tensor,
                padded: PaddedSubsets, l2: float) -> torch.Tensor:
    """Fit w for each subset of ``padded`` (pair-level arrays of one dtype/device); returns (B, d)."""
    idx = padded.index
    w, _ = fit_batch(features[idx], base_output[idx], labels[idx], binary[idx], padded.weight, l2)
    return w
