"""Grad-TAG estimates: per subset and task, the validation loss of the linearized fine-tuned model.

Input: the projected gradients and base outputs of every labelled (row, task) pair (train and
validation), the labels, and the sampled subsets. For each subset S, w_S is fitted on S's
training pairs (``surrogates``), and every task i of S is scored on its validation pairs with
z = f(x; θ*) + g̃ᵀ w_S. The per-subset table is the higher-order affinity; the pairwise matrix
follows from it (``affinities``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from affinity.gradients import GradientFeatures
from affinity.losses import pointwise_correct
from affinity.progress import Progress
from affinity.surrogates import _loss_derivatives, fit_batch, pad_subset_rows, subset_hessians, task_hessians


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
    """Pair-level arrays for the estimator, on one device and dtype."""

    features: torch.Tensor
    base_output: torch.Tensor
    labels: torch.Tensor
    binary: torch.Tensor
    train_rows: list[np.ndarray]  # per task: indices of its training pairs
    val_rows: list[np.ndarray]  # per task: indices of its validation pairs

    @classmethod
    def build(cls, grads: GradientFeatures, Y: np.ndarray, train: np.ndarray, binary_tasks: np.ndarray,
              device: torch.device, dtype: torch.dtype) -> "PairData":
        rows, tasks = grads.rows, grads.tasks
        is_train = train[rows, tasks]
        n_tasks = Y.shape[1]
        order = np.arange(len(rows))
        train_rows = [order[(tasks == t) & is_train] for t in range(n_tasks)]
        val_rows = [order[(tasks == t) & ~is_train] for t in range(n_tasks)]
        return cls(
            features=torch.as_tensor(grads.features, device=device).to(dtype),
            base_output=torch.as_tensor(grads.base_output, device=device).to(dtype),
            labels=torch.as_tensor(Y[rows, tasks], device=device).to(dtype),
            binary=torch.as_tensor(binary_tasks[tasks], device=device),
            train_rows=train_rows, val_rows=val_rows,
        )

    def base_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """Validation loss and accuracy of the base model (w = 0) per task."""
        n = len(self.val_rows)
        loss, acc = np.zeros(n), np.full(n, np.nan)
        for t, r in enumerate(self.val_rows):
            idx = torch.as_tensor(r, device=self.features.device)
            z, y, b = self.base_output[idx], self.labels[idx], self.binary[idx]
            loss[t] = float(_loss_derivatives(z, y, b)[0].mean())
            if bool(b.all()):
                acc[t] = float(pointwise_correct(z, y).mean())
        return loss, acc


def _batch_size(data: PairData, subsets: list[tuple[int, ...]], limit: int, memory_mb: int) -> int:
    widest = max(sum(len(data.train_rows[t]) for t in s) for s in subsets)
    d = data.features.shape[1]
    per_subset = widest * d * data.features.element_size() * 3 + d * d * data.features.element_size() * 3
    return int(max(1, min(limit, (memory_mb * 2**20) // max(per_subset, 1))))


def grad_tag_table(data: PairData, subsets: list[tuple[int, ...]], l2: float, subset_batch: int = 64,
                   memory_mb: int = 512, progress: Progress | None = None) -> SubsetTable:
    """Fit the linearized model on every subset (batched) and score each of its tasks."""
    size = max(len(s) for s in subsets)
    val_loss = np.full((len(subsets), size), np.nan)
    val_acc = np.full((len(subsets), size), np.nan)
    device, dtype = data.features.device, data.features.dtype
    batch = _batch_size(data, subsets, subset_batch, memory_mb)
    progress = progress or Progress()
    progress.start("surrogate fits", len(subsets))
    d = data.features.shape[1]
    # Per-task Hessians at w = 0, shared by every subset, when they fit the memory budget.
    hessians = None
    if len(data.train_rows) * d * d * data.features.element_size() <= memory_mb * 2**20 // 2:
        hessians = task_hessians(data.features, data.base_output, data.labels, data.binary, data.train_rows)
    for start in range(0, len(subsets), batch):
        chunk = subsets[start:start + batch]
        fit = pad_subset_rows(chunk, data.train_rows, device, dtype)
        i = fit.index
        H0 = subset_hessians(hessians, chunk) if hessians is not None else None
        w, _ = fit_batch(data.features[i], data.base_output[i], data.labels[i], data.binary[i], fit.weight, l2, H0)
        ev = pad_subset_rows(chunk, data.val_rows, device, dtype, weighted=False)
        j = ev.index
        z = data.base_output[j] + torch.einsum("brd,bd->br", data.features[j], w)
        loss = _loss_derivatives(z, data.labels[j], data.binary[j])[0] * ev.weight
        correct = pointwise_correct(z, data.labels[j]) * ev.weight
        binary_row = (data.binary[j] | (ev.weight == 0)).to(dtype)
        B = len(chunk)
        sums = torch.zeros(B, size, dtype=dtype, device=device).scatter_add_(1, ev.position, loss)
        hits = torch.zeros(B, size, dtype=dtype, device=device).scatter_add_(1, ev.position, correct)
        counts = torch.zeros(B, size, dtype=dtype, device=device).scatter_add_(1, ev.position, ev.weight)
        allbin = torch.ones(B, size, dtype=dtype, device=device).scatter_reduce_(1, ev.position, binary_row, "amin")
        counts = counts.clamp_min(1)
        l_np = (sums / counts).cpu().numpy()
        a_np = torch.where(allbin > 0, hits / counts, torch.full_like(hits, float("nan"))).cpu().numpy()
        for b, s in enumerate(chunk):
            val_loss[start + b, :len(s)] = l_np[b, :len(s)]
            val_acc[start + b, :len(s)] = a_np[b, :len(s)]
        progress.advance(len(chunk))
        progress.check_cancelled()
    progress.finish()
    return SubsetTable(subsets=list(subsets), val_loss=val_loss, val_acc=val_acc)
