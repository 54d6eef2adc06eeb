"""Linearized fine-tuning on task subsets, fitted for many subsets at once.

For a subset S the fine-tuned model is approximated by f(x; θ* + P w) ≈ f(x; θ*) + g̃(x)ᵀ w,
with g̃ the projected gradient. w minimizes

    F_S(w) = Σ_{t∈S} (1/|S|) · mean_{r ∈ train(t)} ℓ_t(y_r, f_r + g̃_rᵀ w) + (λ/2) ‖w‖²

with ℓ the logistic loss on logits (binary tasks) or the squared error (regression): an
L2-penalized logistic (ridge) regression with the base output as a fixed offset, weighting the
tasks equally as base training does.

Solver. F_S is strictly convex. All subsets of a batch are fitted together, organised by task:
a task's rows are multiplied once by the weights of every subset that contains it (one GEMM per
task, no per-subset copies of the rows), so a pass over the data costs exactly the useful work
and memory grows with subsets × rows, not × d. Steps are L-BFGS steps (8 curvature pairs per
subset, batched two-loop recursion) whose initial metric is one d × d matrix for the batch: the
start Hessian H_S(0) = Σ_{t∈S} H_t/|S| + λI averaged over the batch's subsets, built from
per-task matrices H_t = mean_{r∈train(t)} ℓ''(f_r) g̃_r g̃_rᵀ computed once and factored once
(in float32: it is only a metric); each iteration is two passes over the rows (the Armijo line
search reuses the products). Options: a metric per subset (its own H_S(0), one factorization
each), and refreshing a slow subset's metric to its exact Hessian (Newton-like, d passes per
refresh). On the built-in job's 300 problems (700 rows, d = 200) the shared metric took 10
iterations, a metric per subset 9, and Newton with fresh Hessians 5 at several times the cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def task_loss(z: torch.Tensor, y: torch.Tensor, binary: bool) -> torch.Tensor:
    """The loss alone (what a line search needs)."""
    return torch.nn.functional.softplus(z) - y * z if binary else (z - y) ** 2


def loss_derivatives(z: torch.Tensor, y: torch.Tensor, binary: bool | torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Loss, first and second derivative with respect to the output z."""
    if isinstance(binary, bool):
        if binary:
            s = torch.sigmoid(z)
            return torch.nn.functional.softplus(z) - y * z, s - y, s * (1.0 - s)
        return (z - y) ** 2, 2.0 * (z - y), torch.full_like(z, 2.0)
    s = torch.sigmoid(z)
    loss = torch.where(binary, torch.nn.functional.softplus(z) - y * z, (z - y) ** 2)
    d1 = torch.where(binary, s - y, 2.0 * (z - y))
    d2 = torch.where(binary, s * (1.0 - s), torch.full_like(z, 2.0))
    return loss, d1, d2


@dataclass
class TaskBlock:
    """One task's pairs: projected gradients (n, d), base outputs and labels (n,)."""

    G: torch.Tensor
    f: torch.Tensor
    y: torch.Tensor
    binary: bool

    def outputs(self, W: torch.Tensor) -> torch.Tensor:
        """Linearized outputs f + G wᵀ for several weight vectors W (B, d): (n, B)."""
        return self.f[:, None] + self.G @ W.T


def task_hessians(blocks: list[TaskBlock]) -> torch.Tensor:
    """H_t = mean over task t's rows of ℓ''(f_r) g̃_r g̃_rᵀ, the per-task Hessian at w = 0: (tasks, d, d)."""
    d = blocks[0].G.shape[1]
    out = torch.zeros(len(blocks), d, d, dtype=blocks[0].G.dtype, device=blocks[0].G.device)
    for t, b in enumerate(blocks):
        if len(b.f):
            _, _, d2 = loss_derivatives(b.f, b.y, b.binary)
            out[t] = (b.G * (d2 / len(b.f))[:, None]).T @ b.G
    return out


def membership(subsets: list[tuple[int, ...]], n_tasks: int, device: torch.device, dtype: torch.dtype
               ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per task, the indices of the subsets containing it; and the (subsets × tasks) weights 1/|S|."""
    members: list[list[int]] = [[] for _ in range(n_tasks)]
    weight = torch.zeros(len(subsets), n_tasks, dtype=dtype, device=device)
    for b, s in enumerate(subsets):
        for t in s:
            members[t].append(b)
        weight[b, list(s)] = 1.0 / len(s)
    return [torch.as_tensor(m, dtype=torch.long, device=device) for m in members], weight


def subset_objective(W: torch.Tensor, blocks: list[TaskBlock], subsets: list[tuple[int, ...]], l2: float) -> torch.Tensor:
    """F_S(w_S) for every subset (rows of W)."""
    members, weight = membership(subsets, len(blocks), W.device, W.dtype)
    obj = 0.5 * l2 * (W * W).sum(1)
    for t, (b, m) in enumerate(zip(blocks, members)):
        if len(m) and len(b.f):
            loss = loss_derivatives(b.outputs(W[m]), b.y[:, None], b.binary)[0]
            obj = obj.index_add(0, m, weight[m, t] * loss.mean(0))
    return obj


def fit_subsets(blocks: list[TaskBlock], subsets: list[tuple[int, ...]], l2: float,
                hessians: torch.Tensor | None = None, max_iter: int = 100, tol: float = 1e-13,
                refresh_ratio: float | None = None, memory: int = 8, metric: str = "shared"
                ) -> tuple[torch.Tensor, int]:
    """Minimize F_S for every subset; returns W (subsets, d) and the number of iterations.

    Stops when every subset's Newton decrement gᵀH⁻¹g (≈ 2·(F_S(w) − min F_S)) is at most
    ``tol``·max(1, |F_S|): by default F_S is within ~1e-13 (relative) of its minimum. Far inside
    the 1e-6 the estimates need, but it makes w independent of how subsets are batched (the
    shared metric and the L-BFGS path depend on the batch) to ~1e-6 relative, so every backend
    and memory setting gives the same affinities (at 1e-10: 3e-5, measured on the built-in job).
    A subset whose decrement fell by less than ``refresh_ratio`` in one iteration gets its metric
    refreshed to the exact Hessian at its current w (None: never; 0: every iteration, i.e.
    damped Newton). A refresh costs about d passes over the subset's
    rows, so it is kept for subsets the fixed metric serves badly. ``memory``: curvature pairs of
    the L-BFGS correction applied on top of the metric (0: the metric alone). ``metric``:
    "shared", one d × d matrix for the whole batch (the start Hessian averaged over the batch's
    subsets, factored once: the L-BFGS pairs learn each subset's difference), or "subset", each
    subset's own start Hessian (one factorization per subset, fewer iterations).
    """
    if metric not in ("shared", "subset"):
        raise ValueError(f"metric={metric!r} is not known; use 'shared' or 'subset'")
    G0 = blocks[0].G
    d, device, dtype = G0.shape[1], G0.device, G0.dtype
    B = len(subsets)
    members, weight = membership(subsets, len(blocks), device, dtype)
    active_tasks = [t for t, (b, m) in enumerate(zip(blocks, members)) if len(m) and len(b.f)]
    if hessians is None:
        hessians = task_hessians(blocks)
    eye = torch.eye(d, dtype=torch.float32, device=device)
    # The step metric only has to be positive definite, not exact: it is assembled and factored in
    # float32 (objective and gradient stay in ``dtype``, so the optimum does not move). Batched
    # cholesky_inverse is pathologically slow on CPU: triangular solves instead.
    if metric == "subset":
        H0 = (weight.float() @ hessians.float().reshape(len(blocks), -1)).reshape(B, d, d) + l2 * eye
    else:
        H0 = (weight.float().mean(0) @ hessians.float().reshape(len(blocks), -1)).reshape(d, d) + l2 * eye
    L, _ = torch.linalg.cholesky_ex(H0)
    del H0
    W = torch.zeros(B, d, dtype=dtype, device=device)
    Z = {t: blocks[t].f[:, None].expand(-1, len(members[t])).clone() for t in active_tasks}
    G32 = {t: blocks[t].G.float() for t in active_tasks} if refresh_ratio is not None else {}  # for refresh()

    def objective_and_grad(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        obj = 0.5 * l2 * (W * W).sum(1)
        grad = l2 * W
        for t in active_tasks:
            b, m = blocks[t], members[t]
            c = weight[m, t] / len(b.f)
            loss, d1, _ = loss_derivatives(Z[t], b.y[:, None], b.binary)
            obj = obj.index_add(0, m, c * loss.sum(0))
            grad = grad.index_add(0, m, (b.G.T @ (d1 * c)).T)
        return obj, grad

    def refresh(which: torch.Tensor) -> None:
        """Exact Hessians at the current W for the subsets in ``which`` (bool, B), factored into L."""
        idx = torch.nonzero(which).squeeze(1)
        slot = torch.full((B,), -1, dtype=torch.long, device=device)
        slot[idx] = torch.arange(len(idx), device=device)
        H = eye.repeat(len(idx), 1, 1) * l2
        for t in active_tasks:
            b, m = blocks[t], members[t]
            keep = torch.nonzero(which[m]).squeeze(1)
            if not len(keep):
                continue
            d2 = loss_derivatives(Z[t][:, keep], b.y[:, None], b.binary)[2]
            root = (d2 * (weight[m[keep], t] / len(b.f))).sqrt().float().T  # (members kept, rows)
            step = max(1, (len(idx) * d) // max(1, len(b.f)))  # temporaries ≤ the size of H
            for a in range(0, len(keep), step):
                A = G32[t][None] * root[a:a + step, :, None]  # (chunk, rows, d)
                H.index_add_(0, slot[m[keep[a:a + step]]], A.transpose(1, 2) @ A)
        nonlocal L
        if L.dim() == 2:  # from the shared metric to one per subset
            L = L.expand(B, d, d).clone()
        L[idx] = torch.linalg.cholesky_ex(H)[0]

    def solve(grad: torch.Tensor) -> torch.Tensor:
        """H⁻¹g: triangular solves, all subsets at once (batched ones are 3–4× faster on CPU than
        cholesky_solve)."""
        if L.dim() == 2:
            y = torch.linalg.solve_triangular(L, grad.float().T, upper=False)
            return torch.linalg.solve_triangular(L.T, y, upper=True).T.to(dtype)
        y = torch.linalg.solve_triangular(L, grad.float().unsqueeze(-1), upper=False)
        return torch.linalg.solve_triangular(L.mT, y, upper=True).squeeze(-1).to(dtype)

    history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # L-BFGS pairs (s, y, 1/sᵀy)
    # Per-subset scale of the metric, γ = sᵀy / yᵀM⁻¹y from the newest pair (the usual L-BFGS
    # initial scaling, here of a preconditioner): the curvature at the optimum can be far below
    # the start's when the fitted outputs move far from the base outputs.
    gamma = torch.ones(B, dtype=dtype, device=device)

    def direction(grad: torch.Tensor) -> torch.Tensor:
        """L-BFGS two-loop recursion with the metric as the initial Hessian, batched over subsets."""
        q, coefs = grad, []
        for s, y, rho in reversed(history):
            a = rho * (s * q).sum(1)
            q = q - a[:, None] * y
            coefs.append(a)
        r = gamma[:, None] * solve(q)
        for (s, y, rho), a in zip(history, reversed(coefs)):
            r = r + s * (a - rho * (y * r).sum(1))[:, None]
        return r

    obj, grad = objective_and_grad(W)
    previous = None
    it = 0
    for it in range(1, max_iter + 1):
        step = direction(grad)
        decrement = (grad * step).sum(1)  # > 0: the quasi-Newton metric is positive definite
        if bool((decrement <= 0).any()):  # rounding broke it: the plain metric, fresh history
            history.clear()
            gamma.fill_(1.0)
            step = solve(grad)
            decrement = (grad * step).sum(1)
        pending_fit = decrement > tol * obj.abs().clamp(min=1.0)
        if not bool(pending_fit.any()):
            break
        if refresh_ratio is not None and previous is not None:
            slow = pending_fit & (decrement > refresh_ratio * previous)
            if bool(slow.any()):
                refresh(slow)
                step = direction(grad)
                decrement = (grad * step).sum(1)
        previous = decrement
        U = {t: blocks[t].G @ step[members[t]].T for t in active_tasks}
        alpha = pending_fit.to(dtype)  # converged subsets stay where they are
        pending = pending_fit.clone()
        for _ in range(40):  # Armijo backtracking, per subset, without new passes over the rows
            cand = 0.5 * l2 * ((W - alpha[:, None] * step) ** 2).sum(1)
            for t in active_tasks:
                b, m = blocks[t], members[t]
                zc = Z[t] - alpha[m] * U[t]
                cand = cand.index_add(0, m, weight[m, t] / len(b.f) * task_loss(zc, b.y[:, None], b.binary).sum(0))
            ok = cand <= obj - 1e-4 * alpha * decrement
            pending = pending & ~ok
            if not bool(pending.any()):
                break
            alpha = torch.where(pending, alpha * 0.5, alpha)
        alpha = torch.where(pending, torch.zeros_like(alpha), alpha)  # no decrease found: stay
        W = W - alpha[:, None] * step
        for t in active_tasks:
            Z[t] = Z[t] - alpha[members[t]] * U[t]
        old_grad = grad
        obj, grad = objective_and_grad(W)
        if memory:
            s, y = -alpha[:, None] * step, grad - old_grad
            sy = (s * y).sum(1)
            rho = torch.where(sy > 1e-12 * (s * s).sum(1).sqrt() * (y * y).sum(1).sqrt(), 1.0 / sy, torch.zeros_like(sy))
            history.append((s, y, rho))
            del history[:-memory]
            yMy = (y * solve(y)).sum(1)
            gamma = torch.where((rho > 0) & (yMy > 0), sy / yMy, gamma)
    return W, it


def evaluate_subsets(blocks: list[TaskBlock], subsets: list[tuple[int, ...]], W: torch.Tensor
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Mean loss and accuracy (NaN for regression) of every task of every subset on ``blocks``' rows."""
    size = max(len(s) for s in subsets)
    loss_out = np.full((len(subsets), size), np.nan)
    acc_out = np.full((len(subsets), size), np.nan)
    position = [{t: k for k, t in enumerate(s)} for s in subsets]
    members, _ = membership(subsets, len(blocks), W.device, W.dtype)
    for t, (b, m) in enumerate(zip(blocks, members)):
        if not len(m) or not len(b.f):
            continue
        Z = b.outputs(W[m])
        loss = loss_derivatives(Z, b.y[:, None], b.binary)[0].mean(0).cpu().numpy()
        acc = (((Z > 0).to(b.y.dtype) == b.y[:, None]).to(Z.dtype).mean(0).cpu().numpy() if b.binary else None)
        for j, s_idx in enumerate(m.tolist()):
            k = position[s_idx][t]
            loss_out[s_idx, k] = loss[j]
            if acc is not None:
                acc_out[s_idx, k] = acc[j]
    return loss_out, acc_out
