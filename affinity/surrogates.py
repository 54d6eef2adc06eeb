"""Linearized fine-tuning on task subsets, fitted for many subsets at once.

For a subset S the fine-tuned model is approximated by f(x; θ* + P w) ≈ f(x; θ*) + g̃(x)ᵀ w,
with g̃ the projected gradient. w minimizes

    F_S(w) = Σ_{t∈S} (1/|S|) · mean_{r ∈ train(t)} ℓ_t(y_r, f_r + g̃_rᵀ w) + (λ/2) ‖w‖²

with ℓ the logistic loss on logits (binary tasks) or the squared error (regression): an
L2-penalized logistic (ridge) regression with the base output as a fixed offset, weighting the
tasks equally as base training does.

Solver. F_S is strictly convex. All subsets of a batch are fitted together, organised by task:
a task's rows are multiplied once by the weights of every subset that contains it (no per-subset
copies of the rows), so a pass over the data costs exactly the useful work and memory grows with
subsets × rows, not × d. Tasks of similar row counts are packed into zero-padded tensors
(``task_blocks``) so that a pass is a few batched products (torch.bmm) whatever the number of
tasks. The products and the per-row values (outputs, losses, slopes) are float32 (G is float32
as projected); sums over rows, gradients and w accumulate in float64. Binary rows are signed
(σ = 1 − 2y) so the loss is softplus(σz) and its slope sigmoid(σz); regression rows carry the
residual f − y in place of f. Steps are L-BFGS steps (8
curvature pairs per subset, ``lbfgs``) whose initial metric is one d × d matrix for every batch:
the start Hessian of an average subset, mean_t H_t + λI, from per-task matrices
H_t = mean_{r∈train(t)} ℓ''(f_r) g̃_r g̃_rᵀ. The packs are rotated once to its eigenvectors, where
it is diagonal (a rotation changes neither the fit nor ‖w‖), so applying it costs one
elementwise product. Each iteration is two passes over the rows; the line search reuses the
products (Armijo on the objective while its changes exceed float32 rounding, then the
approximate Wolfe condition on the gradient the next iteration needs anyway), and its accepted
trial's outputs, objective and gradient are the next iterate's. Once at most half of the batch's
subsets are still iterating, the others leave the passes (the rows are laid out again for the
rest), so a few slow subsets do not keep every subset's rows in every pass.
"""

from __future__ import annotations

import numpy as np
import torch

from affinity.lbfgs import BatchedLBFGS
from affinity.task_blocks import PackSlots, TaskBlock, TaskPack, pack_slots, pack_tasks, slot_sources


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


def task_hessians(blocks: list[TaskBlock]) -> torch.Tensor:
    """H_t = mean over task t's rows of ℓ''(f_r) g̃_r g̃_rᵀ, the per-task Hessian at w = 0: (tasks, d, d)."""
    d = blocks[0].G.shape[1]
    out = torch.zeros(len(blocks), d, d, dtype=blocks[0].f.dtype, device=blocks[0].f.device)
    for t, b in enumerate(blocks):
        if len(b.f):
            _, _, d2 = loss_derivatives(b.f, b.y, b.binary)
            G = b.G.to(out.dtype)
            out[t] = (G * (d2 / len(b.f))[:, None]).T @ G
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


def pack_loss(p: TaskPack, v: torch.Tensor) -> torch.Tensor:
    """Per-row loss of a pack's outputs ``v`` (k, r, m): signed logits or residuals (signed packs),
    logits or regression outputs."""
    if p.signed:
        return torch.nn.functional.softplus(v) if p.binary else v * v
    return task_loss(v, p.y.to(v.dtype)[:, :, None], p.binary)


def pack_slope(p: TaskPack, v: torch.Tensor) -> torch.Tensor:
    """Per-row derivative of ``pack_loss`` in v (the slope alone: this is in the solver's inner loop)."""
    if p.signed:
        return torch.sigmoid(v) if p.binary else 2.0 * v
    y = p.y.to(v.dtype)[:, :, None]
    return torch.sigmoid(v) - y if p.binary else 2.0 * (v - y)


def mean_task_hessian(packs: list[TaskPack]) -> torch.Tensor:
    """mean_t H_t over the packed tasks (the per-task Hessians at w = 0, see ``task_hessians``): the
    solver's metric, less λI. One product per pack; signed rows give the same H_t."""
    d = packs[0].G.shape[2]
    dtype = packs[0].f.dtype
    total = torch.zeros(d, d, dtype=dtype, device=packs[0].f.device)
    for p in packs:
        if p.binary:  # at w = 0 the outputs are the base outputs
            s = torch.sigmoid(p.f)
            d2 = s * (1.0 - s)
        else:
            d2 = torch.full_like(p.f, 2.0)
        G = p.G.to(dtype).reshape(-1, d)
        total += (G * (d2 * p.mask / p.rows[:, None]).reshape(-1, 1)).T @ G
    return total / sum(len(p.tasks) for p in packs)


def metric_basis(mean_hessian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (d,) and eigenvectors (d, d) of ``mean_task_hessian``: in the basis of its
    eigenvectors the solver's metric is diagonal (``TaskPack.rotated``)."""
    evals, basis = torch.linalg.eigh(mean_hessian.double())
    return evals.clamp(min=0.0).to(mean_hessian.dtype), basis.to(mean_hessian.dtype)


def fit_subsets(blocks: list[TaskBlock], subsets: list[tuple[int, ...]], l2: float, **options
                ) -> tuple[torch.Tensor, int]:
    """``fit_packed`` on ``blocks``, packed here (binary rows signed, float32 products) and rotated
    to the metric's basis; W is returned in the blocks' own coordinates."""
    packs = pack_tasks(blocks, products=torch.float32, signed=True)
    metric, basis = metric_basis(mean_task_hessian(packs))
    W, it = fit_packed([p.rotated(basis) for p in packs], subsets, l2, metric, **options)
    return W @ basis.T.to(W.dtype), it


def fit_packed(packs: list[TaskPack], subsets: list[tuple[int, ...]], l2: float, metric: torch.Tensor,
               max_iter: int = 100, tol: float = 1e-13, memory: int = 8, trace: list | None = None
               ) -> tuple[torch.Tensor, int]:
    """Minimize F_S for every subset; returns W (subsets, d) in the dtype of the packs' f, and the
    number of iterations.

    ``packs``: the training pairs packed by ``pack_tasks`` and rotated to the eigenvectors of
    ``mean_task_hessian`` (``metric_basis``, ``TaskPack.rotated``); W is in that basis. Their G's
    dtype is the dtype of the passes over the rows and of the per-row values (outputs, losses,
    slopes); sums over rows, gradients and w accumulate in f's dtype. ``metric``: the eigenvalues,
    i.e. the start Hessian of an average subset less λI, diagonal in the packs' basis: the metric
    of every batch, so that no subset's path depends on which subsets share its batch.

    Stops when every subset's Newton decrement gᵀH⁻¹g (≈ 2·(F_S(w) − min F_S)) is at most
    ``tol``·max(1, |F_S|): by default F_S is within ~1e-13 (relative) of its minimum, far inside the
    1e-6 the estimates need, so that w does not depend on rounding either (other batch shapes,
    other machines): every backend and memory setting gives the same affinities. ``memory``:
    curvature pairs of the L-BFGS correction on top of the metric (0: the metric alone).
    ``trace``: if given, each iteration appends the positions of the subsets in its passes.
    """
    if not packs:
        raise ValueError("no task has training rows")
    d, device, dtype = packs[0].G.shape[2], packs[0].f.device, packs[0].f.dtype
    B = len(subsets)
    inverse = 1.0 / (metric.to(dtype) + l2)  # the metric is diagonal in the packs' basis
    products = packs[0].G.dtype
    # Below this relative size a change of the objective is rounding of the passes' dtype: the
    # line search then decides on the directional derivative instead (see the loop).
    noise = 100.0 * torch.finfo(products).eps
    active = np.arange(B)  # the subsets still iterating (positions in ``subsets``)

    def lay_out(batch: list[tuple[int, ...]]) -> tuple[list[PackSlots], list[torch.Tensor], list[torch.Tensor],
                                                     list[torch.Tensor]]:
        """The batch on the packs, and per PackSlots what the passes read: the flat subset index of
        each slot, the slot weights and the task rows' mask in the products' dtype."""
        slots = pack_slots(packs, batch)
        return (slots, [s.index.reshape(-1) for s in slots], [s.weight.to(products)[:, None, :] for s in slots],
                [s.pack.mask.to(products)[:, None, :] for s in slots])

    slots, flat, weights, masks = lay_out(subsets)
    W_done = torch.zeros(B, d, dtype=dtype, device=device)
    W = W_done.clone()
    V = [s.pack.f.to(products)[:, :, None].expand(-1, -1, s.index.shape[1]).clone() for s in slots]

    def objective(V: list[torch.Tensor], W: torch.Tensor) -> torch.Tensor:
        obj = torch.zeros(B + 1, dtype=dtype, device=device)
        for s, i, v, mask in zip(slots, flat, V, masks):
            # Σ over each task's real rows, weighted per slot: (k·m,)
            sums = torch.bmm(mask, pack_loss(s.pack, v)).squeeze(1)
            obj.index_add_(0, i, (s.weight * sums.to(dtype)).reshape(-1))
        return obj[:B] + 0.5 * l2 * (W * W).sum(1)

    def gradient(V: list[torch.Tensor], W: torch.Tensor) -> torch.Tensor:
        # Each subset's few task terms are summed in the products' dtype (as the products
        # themselves are; casting every (task, subset) term to float64 first cost as much as a
        # product), then the penalty's term in float64.
        grad = torch.zeros(B + 1, d, dtype=products, device=device)
        for s, i, v, wt in zip(slots, flat, V, weights):
            G = s.pack.G  # padded rows have g̃ = 0: whatever their slope, they add nothing
            slope = pack_slope(s.pack, v).mul_(wt)
            grad.index_add_(0, i, torch.bmm(slope.transpose(1, 2), G).reshape(-1, d))  # (k·m, d)
        return grad[:B].to(dtype) + l2 * W

    # L-BFGS on the metric, with the usual per-subset scale γ = sᵀy / yᵀM⁻¹y of the newest pair: the
    # curvature at the optimum can be far below the start's when the fitted outputs move far from
    # the base outputs.
    lbfgs = BatchedLBFGS(inverse, B, memory)

    def per_slot(v: torch.Tensor, s: PackSlots) -> torch.Tensor:
        """Per-subset values ``v`` (B,) at each slot of ``s`` (an empty slot gets 0), as (k, 1, m)."""
        return s.gather(torch.cat([v, v.new_zeros(1)]))[:, None, :]

    def outputs(alpha: torch.Tensor) -> list[torch.Tensor]:
        """The per-row outputs after each subset's step of length ``alpha`` (B,) along ``U``."""
        return [torch.addcmul(v, per_slot(-alpha, s).to(products), u) for s, v, u in zip(slots, V, U)]

    obj, grad = objective(V, W), gradient(V, W)
    it = 0
    for it in range(1, max_iter + 1):
        step = lbfgs.solve(grad)
        decrement = (grad * step).sum(1)  # > 0: the quasi-Newton metric is positive definite
        if bool((decrement <= 0).any()):  # rounding broke it: the plain metric, fresh history
            lbfgs.reset()
            step = lbfgs.solve(grad)
            decrement = (grad * step).sum(1)
        scale = obj.abs().clamp(min=1.0)
        pending_fit = decrement > tol * scale
        if not bool(pending_fit.any()):
            break
        if 2 * int(pending_fit.sum()) <= B:
            # Most subsets are done: lay out the others alone, so that the passes skip the done
            # ones (a few slow subsets no longer keep the whole batch's rows in every pass).
            keep = torch.nonzero(pending_fit).squeeze(1)
            kept = keep.cpu().numpy()
            done = torch.as_tensor(active[~pending_fit.cpu().numpy()], device=device)
            W_done[done] = W[~pending_fit]
            active = active[kept]
            old_slots = slots
            slots, flat, weights, masks = lay_out([subsets[a] for a in active])
            V = [V[q][I, :, J].permute(0, 2, 1).contiguous() for q, I, J in slot_sources(old_slots, slots, kept)]
            W, grad, obj, step, decrement, scale = (x[keep] for x in (W, grad, obj, step, decrement, scale))
            pending_fit = pending_fit[keep]
            lbfgs.select(keep)
            B = len(active)
        if trace is not None:
            trace.append(active.copy())
        step_slots = torch.cat([step, step.new_zeros(1, d)]).to(products)
        U = [torch.bmm(s.pack.G, s.gather(step_slots).transpose(1, 2)) for s in slots]
        alpha = pending_fit.to(dtype)  # converged subsets stay where they are
        pending = pending_fit.clone()
        new_obj = obj.clone()
        # Backtracking per subset, without new products G·p. A step is taken when the objective
        # fell by more than its rounding and by the Armijo fraction of the decrement. When the
        # change is within rounding (near the optimum, where objective values cannot tell steps
        # apart), it is taken when the directional derivative at the trial, -pᵀ∇F, is at most 0.8
        # of the decrement: the approximate Wolfe condition of Hager and Zhang (2005), from the
        # gradient that the next iteration needs anyway. A rise beyond rounding halves the step.
        for _ in range(40):
            trial = outputs(alpha)
            W_trial = W - alpha[:, None] * step
            cand = objective(trial, W_trial)
            ok = pending & (cand <= obj - 1e-4 * alpha * decrement) & (obj - cand > noise * scale)
            unsure = pending & ~ok & (cand <= obj + noise * scale)
            trial_grad = None
            if bool(unsure.any()):
                trial_grad = gradient(trial, W_trial)
                ok = ok | (unsure & (-(trial_grad * step).sum(1) <= 0.8 * decrement))
            new_obj = torch.where(ok, cand, new_obj)
            pending = pending & ~ok
            if not bool(pending.any()):
                break
            alpha = torch.where(pending, alpha * 0.5, alpha)
        if bool(pending.any()):  # no decrease found: these stay where they are
            alpha = torch.where(pending, torch.zeros_like(alpha), alpha)
            trial = outputs(alpha)
            trial_grad = None
        # The last trial used every subset's final step length: its outputs are the new ones.
        V, obj = trial, new_obj
        W = W - alpha[:, None] * step
        old_grad = grad
        grad = trial_grad if trial_grad is not None else gradient(V, W)
        lbfgs.update(-alpha[:, None] * step, grad - old_grad)
    W_done[torch.as_tensor(active, device=device)] = W
    return W_done, it


def evaluate_subsets(blocks: list[TaskBlock], subsets: list[tuple[int, ...]], W: torch.Tensor
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``evaluate_packed`` on ``blocks``, packed here with products in W's dtype."""
    return evaluate_packed(pack_tasks(blocks, dtype=W.dtype, products=W.dtype), subsets, W)


def evaluate_packed(packs: list[TaskPack], subsets: list[tuple[int, ...]], W: torch.Tensor
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Mean loss and accuracy (NaN for regression) of every task of every subset on the packs' rows
    (unsigned packs), as (subsets, largest size) arrays in the subsets' task order."""
    B, size = len(subsets), max(len(s) for s in subsets)
    loss_out = torch.full(((B + 1) * size,), float("nan"), dtype=W.dtype, device=W.device)
    acc_out = loss_out.clone()
    W_slots = torch.cat([W, W.new_zeros(1, W.shape[1])])
    for s in pack_slots(packs, subsets):
        p = s.pack
        if p.signed:
            raise ValueError("evaluate_packed needs unsigned packs (the labels decide accuracy)")
        Z = p.f[:, :, None] + torch.bmm(p.G, s.gather(W_slots).transpose(1, 2).to(p.G.dtype)).to(W.dtype)
        mean = lambda v: torch.bmm(p.mask[:, None, :], v).squeeze(1) / p.rows[:, None]  # noqa: E731
        where = (s.index * size + s.position).reshape(-1)
        loss_out[where] = mean(loss_derivatives(Z, p.y[:, :, None], p.binary)[0]).reshape(-1)
        if p.binary:
            acc_out[where] = mean(((Z > 0).to(W.dtype) == p.y[:, :, None]).to(W.dtype)).reshape(-1)
    shape = (B + 1, size)
    return (loss_out.reshape(shape)[:B].cpu().numpy().astype(np.float64),
            acc_out.reshape(shape)[:B].cpu().numpy().astype(np.float64))
