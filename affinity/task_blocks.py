"""Each task's (row, task) pairs, as one block per task or packed for batched products.

``TaskBlock``: one task's projected gradients, base outputs and labels. ``TaskPack``: tasks of
similar size zero-padded into one (tasks, rows, d) tensor.

The surrogate solver multiplies every task's rows by the weights of every subset that contains
it. One matrix product per task is one Python-level call per task per pass, which dominates when
tasks are many and small (500 tasks of 28 rows: 500 tiny products per pass). Packing tasks of
similar row counts into one zero-padded tensor turns a pass into a few batched products
(``torch.bmm``) whatever the number of tasks. Within a pack row counts differ by at most a
factor ``1 − slack``, so padding costs at most slack/(1 − slack) of the useful work; binary and
regression tasks go to different packs (their losses differ).

A padded row has g̃ = 0, f = 0, y = 0 and mask 0: it adds nothing to any product, and losses
are summed through the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class TaskBlock:
    """One task's pairs: projected gradients (n, d), base outputs and labels (n,)."""

    G: torch.Tensor
    f: torch.Tensor
    y: torch.Tensor
    binary: bool

    def outputs(self, W: torch.Tensor) -> torch.Tensor:
        """Linearized outputs f + G wᵀ for several weight vectors W (B, d): (n, B), in W's dtype."""
        return self.f.to(W.dtype)[:, None] + self.G.to(W.dtype) @ W.T


@dataclass
class TaskPack:
    """``len(tasks)`` tasks padded to ``G.shape[1]`` rows each.

    ``signed`` (the solver's form, labels out of its inner loop): a binary task's rows are
    multiplied by σ = 1 − 2y (+1 for label 0, −1 for label 1), G and f alike, so the logistic loss
    of z = f + g̃ᵀw is softplus(v) with v = σz and its derivative in v is sigmoid(v); a regression
    task's f holds the residual f − y (and y is 0), so its loss is v² with v = z − y: outputs kept
    in float32 then carry the residual's precision, not the target's (targets are not rescaled)."""

    tasks: torch.Tensor  # (k,) task ids, long
    G: torch.Tensor  # (k, r, d), the products' dtype
    f: torch.Tensor  # (k, r) base outputs
    y: torch.Tensor  # (k, r) labels
    mask: torch.Tensor  # (k, r) 1 for a real row, 0 for padding
    rows: torch.Tensor  # (k,) real rows per task
    binary: bool
    signed: bool = False

    def select(self, keep: torch.Tensor) -> "TaskPack":
        """The pack restricted to the tasks at positions ``keep``."""
        return TaskPack(self.tasks[keep], self.G[keep], self.f[keep], self.y[keep], self.mask[keep],
                        self.rows[keep], self.binary, self.signed)

    def rotated(self, basis: torch.Tensor) -> "TaskPack":
        """The pack with every g̃ expressed in an orthonormal ``basis`` (d, d; columns): G·basis, in
        G's dtype. Inner products with w become inner products with basisᵀw, and ‖w‖ is unchanged,
        so a fit in the new basis is the same fit."""
        G = self.G @ basis.to(self.G.dtype)
        return TaskPack(self.tasks, G, self.f, self.y, self.mask, self.rows, self.binary, self.signed)

    def to(self, device: torch.device | str) -> "TaskPack":
        return TaskPack(self.tasks.to(device), self.G.to(device), self.f.to(device), self.y.to(device),
                        self.mask.to(device), self.rows.to(device), self.binary, self.signed)


def pack_tasks(blocks: list[TaskBlock], dtype: torch.dtype | None = None, products: torch.dtype | None = None,
               slack: float = 0.25, signed: bool = False) -> list[TaskPack]:
    """Pack the tasks with at least one row. ``dtype``: of f, y and the mask (default: the blocks' f);
    ``products``: of G (default: ``dtype``); ``signed``: the solver's form (binary rows signed, labels
    0/1; regression rows as residuals: see ``TaskPack``)."""
    live = [t for t, b in enumerate(blocks) if len(b.f)]
    if not live:
        return []
    device = blocks[live[0]].f.device
    dtype = dtype or blocks[live[0]].f.dtype
    products = products or dtype
    d = blocks[live[0]].G.shape[1]
    packs = []
    for binary in (True, False):
        order = sorted((t for t in live if blocks[t].binary == binary), key=lambda t: -len(blocks[t].f))
        start = 0
        while start < len(order):
            width = len(blocks[order[start]].f)
            end = start
            while end < len(order) and len(blocks[order[end]].f) >= (1.0 - slack) * width:
                end += 1
            group = order[start:end]
            counts = [len(blocks[t].f) for t in group]
            slot = torch.repeat_interleave(torch.arange(len(group), device=device),
                                           torch.as_tensor(counts, device=device))
            at = torch.cat([torch.arange(n, device=device) for n in counts])
            y_all = torch.cat([blocks[t].y for t in group]).to(dtype)
            if binary and signed and not bool(((y_all == 0) | (y_all == 1)).all()):
                raise ValueError("a binary task's labels must be 0 or 1 to be signed")
            sign = 1.0 - 2.0 * y_all if binary and signed else torch.ones_like(y_all)
            G = torch.zeros(len(group), width, d, dtype=products, device=device)
            G[slot, at] = torch.cat([blocks[t].G for t in group]).to(products) * sign[:, None].to(products)
            f = torch.zeros(len(group), width, dtype=dtype, device=device)
            f[slot, at] = torch.cat([blocks[t].f for t in group]).to(dtype) * sign
            y = torch.zeros_like(f)
            y[slot, at] = y_all
            if signed and not binary:  # residuals, computed in ``dtype`` before any float32 pass
                f, y = f - y, torch.zeros_like(y)
            mask = torch.zeros_like(f)
            mask[slot, at] = 1.0
            packs.append(TaskPack(torch.as_tensor(group, dtype=torch.long, device=device), G, f, y, mask,
                                  mask.sum(1), binary, signed))
            start = end
    return packs


@dataclass
class PackSlots:
    """Which subsets each task of a pack serves, padded to one width: slot (i, j) is subset
    ``index[i, j]`` of the batch (``B``, one past the last, for an empty slot), in which the task sits
    at ``position[i, j]``; ``weight[i, j]`` = 1/(|S|·rows) of that task (0 for an empty slot)."""

    pack: TaskPack
    index: torch.Tensor  # (k, m) long
    position: torch.Tensor  # (k, m) long
    weight: torch.Tensor  # (k, m)

    def gather(self, W: torch.Tensor) -> torch.Tensor:
        """Rows of ``W`` (B + 1, ...: the last row for the empty slots) per slot: (k, m, ...)."""
        return W.index_select(0, self.index.reshape(-1)).reshape(*self.index.shape, *W.shape[1:])


def pack_slots(packs: list[TaskPack], subsets: list[tuple[int, ...]]) -> list[PackSlots]:
    """Lay the batch ``subsets`` onto the packs; tasks no subset contains are dropped."""
    B = len(subsets)
    sizes = np.fromiter((len(s) for s in subsets), dtype=np.int64, count=B)
    task = np.fromiter((t for s in subsets for t in s), dtype=np.int64, count=int(sizes.sum()))
    subset = np.repeat(np.arange(B), sizes)
    position = np.concatenate([np.arange(n) for n in sizes]) if B else np.zeros(0, dtype=np.int64)
    order = np.argsort(task, kind="stable")  # by task, then by subset
    task, subset, position = task[order], subset[order], position[order]
    n_tasks = 1 + max([int(task.max()) if len(task) else -1] + [int(p.tasks.max()) for p in packs])
    count = np.bincount(task, minlength=n_tasks)
    first = np.concatenate([[0], np.cumsum(count)[:-1]])
    rank = np.arange(len(task)) - first[task]  # the slot of each membership within its task
    out = []
    for p in packs:
        ids = p.tasks.cpu().numpy()
        keep = np.flatnonzero(count[ids] > 0)
        if not len(keep):
            continue
        if len(keep) < len(ids):
            p = p.select(torch.as_tensor(keep, device=p.tasks.device))
            ids = ids[keep]
        width = int(count[ids].max())
        row_of = np.full(n_tasks, -1)
        row_of[ids] = np.arange(len(ids))
        mine = np.flatnonzero(row_of[task] >= 0)
        r, c = row_of[task[mine]], rank[mine]
        index = np.full((len(ids), width), B)
        where = np.zeros((len(ids), width), dtype=np.int64)
        share = np.zeros((len(ids), width))
        index[r, c] = subset[mine]
        where[r, c] = position[mine]
        share[r, c] = 1.0 / sizes[subset[mine]]
        device, dtype = p.f.device, p.f.dtype
        weight = torch.as_tensor(share, device=device, dtype=dtype) / p.rows[:, None]
        out.append(PackSlots(p, torch.as_tensor(index, device=device), torch.as_tensor(where, device=device), weight))
    return out


def slot_sources(old: list[PackSlots], new: list[PackSlots], kept: np.ndarray
                 ) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """Where each slot of ``new`` sits in ``old``, when ``new`` lays out the subsets ``kept``
    (increasing positions in ``old``'s batch) on the same packs: per new PackSlots, the position of
    its old PackSlots and the (task row, slot) indices (k, m) to read there. An empty new slot
    reads slot 0 of its task row (its weight is 0)."""
    B_old = 1 + max(int(s.index.max()) for s in old)
    where: dict[int, tuple[int, int]] = {}  # task id → (old PackSlots, task row)
    keys, rows, cols = [], [], []
    for q, s in enumerate(old):
        k, m = s.index.shape
        tasks = s.pack.tasks.cpu().numpy()
        where.update({int(t): (q, i) for i, t in enumerate(tasks)})
        keys.append((tasks[:, None] * (B_old + 1) + s.index.cpu().numpy()).reshape(-1))
        rows.append(np.repeat(np.arange(k), m))
        cols.append(np.tile(np.arange(m), k))
    out = []
    for s in new:
        tasks = s.pack.tasks.cpu().numpy()
        q = where[int(tasks[0])][0]
        index = s.index.cpu().numpy()
        real = index < len(kept)
        b_old = np.where(real, kept[np.minimum(index, len(kept) - 1)], B_old)
        key = tasks[:, None] * (B_old + 1) + b_old
        order = np.argsort(keys[q], kind="stable")
        found = order[np.minimum(np.searchsorted(keys[q], key, sorter=order), len(order) - 1)]
        I = np.where(real, rows[q][found], np.array([where[int(t)][1] for t in tasks])[:, None])
        J = np.where(real, cols[q][found], 0)
        device = s.index.device
        out.append((q, torch.as_tensor(I, device=device), torch.as_tensor(J, device=device)))
    return out
