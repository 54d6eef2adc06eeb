"""Grad-TAG estimates: per subset and task, the validation loss of the linearized fine-tuned model.

Input: the projected gradients and base outputs of every labelled (row, task) pair (train and
validation), the labels, and the sampled subsets. For each subset S, w_S is fitted on S's
training pairs (``surrogates``), and every task i of S is scored on its validation pairs with
z = f(x; θ*) + g̃ᵀ w_S. The per-subset table is the higher-order affinity; the pairwise matrix
follows from it (``affinities``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from affinity.compute.base import Backend, LocalBackend, shard_batch
from affinity.gradients import GradientFeatures
from affinity.progress import Progress
from affinity.surrogates import evaluate_packed, fit_packed, loss_derivatives, mean_task_hessian, metric_basis
from affinity.task_blocks import TaskBlock, TaskPack, pack_tasks


@dataclass
class SubsetTable:
    """Per-subset estimates: ``val_loss[s, k]`` and ``val_acc[s, k]`` of task ``subsets[s][k]``."""

    subsets: list[tuple[int, ...]]
    val_loss: np.ndarray
    val_acc: np.ndarray

    def records(self, names: list[str]) -> list[dict]:
        return [
            {
                "tasks": [names[t] for t in s],
                "val_loss": {names[t]: float(self.val_loss[i, k]) for k, t in enumerate(s)},
                "val_acc": {names[t]: (None if np.isnan(self.val_acc[i, k]) else float(self.val_acc[i, k]))
                            for k, t in enumerate(s)},
            }
            for i, s in enumerate(self.subsets)
        ]


@dataclass
class PairData:
    """Per task, its training and validation pairs as TaskBlocks on one device: projected gradients
    in float32 (as computed), base outputs and labels in ``dtype``."""

    train: list[TaskBlock]
    val: list[TaskBlock]

    @classmethod
    def build(cls, grads: GradientFeatures, Y: np.ndarray, train: np.ndarray, binary_tasks: np.ndarray,
              device: torch.device, dtype: torch.dtype) -> "PairData":
        rows, tasks = grads.rows, grads.tasks
        is_train = train[rows, tasks]
        G = torch.as_tensor(grads.features, device=device).to(torch.float32)
        f = torch.as_tensor(grads.base_output, device=device).to(dtype)
        y = torch.as_tensor(Y[rows, tasks], device=device).to(dtype)
        out: dict[bool, list[TaskBlock]] = {True: [], False: []}
        # One stable sort by (split, task) instead of a scan of every pair per task: the blocks
        # are contiguous runs of it, in the pairs' own order.
        n_tasks = Y.shape[1]
        key = np.where(is_train, 0, n_tasks) + tasks
        order = np.argsort(key, kind="stable")
        bounds = np.searchsorted(key[order], np.arange(2 * n_tasks + 1))
        for split, offset in ((True, 0), (False, n_tasks)):
            for t in range(n_tasks):
                idx = torch.as_tensor(order[bounds[offset + t]:bounds[offset + t + 1]], device=device)
                out[split].append(TaskBlock(G[idx], f[idx], y[idx], bool(binary_tasks[t])))
        return cls(train=out[True], val=out[False])

    @property
    def device(self) -> torch.device:
        return self.train[0].G.device

    def to(self, device: torch.device | str) -> "PairData":
        move = lambda b: TaskBlock(b.G.to(device), b.f.to(device), b.y.to(device), b.binary)  # noqa: E731
        return PairData(train=[move(b) for b in self.train], val=[move(b) for b in self.val])

    def packed(self) -> "PackedPairs":
        """What the surrogate fits read: training pairs packed with signed binary rows, validation
        pairs packed, both with float32 products and rotated to the eigenvectors of the mean task
        Hessian, whose eigenvalues are the solver's metric (``surrogates.fit_packed``)."""
        train = pack_tasks(self.train, products=torch.float32, signed=True)
        metric, basis = metric_basis(mean_task_hessian(train))
        val = pack_tasks(self.val, dtype=self.train[0].f.dtype, products=torch.float32)
        return PackedPairs(train=[p.rotated(basis) for p in train], val=[p.rotated(basis) for p in val],
                           metric=metric)

    def base_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """Validation loss and accuracy of the base model (w = 0) per task."""
        loss, acc = np.zeros(len(self.val)), np.full(len(self.val), np.nan)
        for t, b in enumerate(self.val):
            loss[t] = float(loss_derivatives(b.f, b.y, b.binary)[0].mean())
            if b.binary:
                acc[t] = float(((b.f > 0).to(b.y.dtype) == b.y).to(b.f.dtype).mean())
        return loss, acc


@dataclass
class PackedPairs:
    """PairData as the surrogate stage reads it (see ``PairData.packed``); one object per stage,
    shipped once to every worker."""

    train: list[TaskPack]
    val: list[TaskPack]
    metric: torch.Tensor  # (d,) the mean task Hessian's eigenvalues; the packs are in its eigenvectors' basis

    def to(self, device: torch.device | str) -> "PackedPairs":
        return PackedPairs([p.to(device) for p in self.train], [p.to(device) for p in self.val],
                           self.metric.to(device))


def _batch_size(data: PairData, subsets: list[tuple[int, ...]], limit: int, memory_mb: int) -> int:
    """Subsets per batch so that the solver's per-subset vectors (w, gradient, step and the L-BFGS
    pairs: ~24 of length d, in f's dtype) and per-row values (outputs, products, line-search
    trial and temporaries: ~6 per (row, subset), times up to 4/3 for the packs' padding, in the
    products' float32) fit the budget."""
    d = data.train[0].G.shape[1]
    rows = np.array([len(b.f) for b in data.train])
    widest = max(int(rows[list(s)].sum()) for s in subsets)
    per_subset = 24 * d * data.train[0].f.element_size() + 8 * widest * data.train[0].G.element_size()
    return int(max(1, min(limit, (memory_mb * 2**20) // per_subset)))


def grad_tag_table(data: PairData, subsets: list[tuple[int, ...]], l2: float | tuple[float, ...],
                   subset_batch: int = 4096, memory_mb: int = 512, progress: Progress | None = None,
                   backend: Backend | None = None) -> SubsetTable:
    """Fit the linearized model on every subset (in batches, on the backend) and score each of its tasks.
    ``l2``: the penalty, or a path of penalties (``penalty_path``) of which each subset keeps the one its
    tasks' mean validation loss is lowest at."""
    size = max(len(s) for s in subsets)
    val_loss = np.full((len(subsets), size), np.nan)
    val_acc = np.full((len(subsets), size), np.nan)
    backend = backend or LocalBackend()
    batch = shard_batch(backend, len(subsets), _batch_size(data, subsets, subset_batch, memory_mb))
    packed = data.packed()
    progress = progress or Progress()
    progress.start("surrogate fits", len(subsets))
    chunks = [subsets[a:a + batch] for a in range(0, len(subsets), batch)]
    if backend.name == "local":
        shared = (packed, l2, None)
    else:  # CPU tensors travel; a node with a GPU moves them there
        shared = (packed.to("cpu"), l2, "auto")
    results = backend.map(surrogate_shard, shared, chunks, progress, amounts=[len(c) for c in chunks], gpu=True)
    start = 0
    for chunk, (loss, acc) in zip(chunks, results):
        val_loss[start:start + len(chunk), :loss.shape[1]] = loss
        val_acc[start:start + len(chunk), :acc.shape[1]] = acc
        start += len(chunk)
    progress.finish()
    return SubsetTable(subsets=list(subsets), val_loss=val_loss, val_acc=val_acc)


def penalty_path(l2: float) -> tuple[float, ...]:
    """The penalties ``estimation.l2_select: validation`` tries: l2 × 1, 3, 10, 30, 100, and infinity (w = 0:
    θ* unchanged), as fine-tuning's early stopping may keep θ* itself."""
    return tuple(l2 * f for f in (1.0, 3.0, 10.0, 30.0, 100.0)) + (math.inf,)


def surrogate_shard(packed: PackedPairs, l2: float | tuple[float, ...], device: str | None,
                    chunk: list[tuple[int, ...]], progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Estimated validation loss and accuracy of each task of each subset of ``chunk`` (a pure function).

    ``l2``: the penalty, or a path of them: each subset keeps the fit whose mean validation loss over its tasks
    is lowest (an infinite penalty: w = 0), the linear model's counterpart of early-stopping fine-tuning on the
    validation rows. ``device``: None to compute where ``packed`` is; "auto" to move to this node's GPU when it
    has one.
    """
    if device == "auto" and torch.cuda.is_available():
        packed = packed.to("cuda")
    path = l2 if isinstance(l2, tuple) else (l2,)
    scored = []
    for penalty in path:
        if math.isinf(penalty):
            W = packed.val[0].f.new_zeros((len(chunk), packed.metric.shape[0]))
        else:
            W, _ = fit_packed(packed.train, chunk, penalty, packed.metric)
        scored.append(evaluate_packed(packed.val, chunk, W))
    if len(scored) == 1:
        loss, acc = scored[0]
    else:
        losses = np.stack([s[0] for s in scored])  # path × subsets × slots
        scored_slots = np.maximum((~np.isnan(losses)).sum(axis=2), 1)
        pick = np.argmin(np.nan_to_num(losses, nan=0.0).sum(axis=2) / scored_slots, axis=0)
        rows = np.arange(len(chunk))
        loss, acc = losses[pick, rows], np.stack([s[1] for s in scored])[pick, rows]
    if progress is not None:
        progress.advance(len(chunk))
        progress.check_cancelled()
    return loss, acc
