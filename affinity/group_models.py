"""One model per group, trained from scratch as a user would train it after our advice.

Every group model is the manifest's model at its initialization seed, trained on the group's
tasks with the manifest's loss, optimizer and early stopping (on the group's validation loss);
all groups of a grouping are stacked and trained together (``finetune_subsets`` on a fresh
model). Returns each task's validation loss and, where the data holds test rows, its test loss
under the model of its group.
"""

from __future__ import annotations

import numpy as np
import torch

from affinity.compute.base import Backend
from affinity.data.table import SplitTable
from affinity.finetune import finetune_subsets
from affinity.manifest import Manifest
from affinity.kinds import make_model
from affinity.progress import Progress
from affinity.training import TensorData


def train_groups(data: SplitTable, tensors: TensorData, manifest: Manifest, groups: list[list[int]],
                 progress: Progress | None = None, backend: Backend | None = None,
                 stage: str = "group models") -> tuple[np.ndarray, np.ndarray]:
    """Per-task (validation, test) losses when each group of ``groups`` is trained from scratch."""
    fresh = make_model(manifest.model, data, manifest.training.seed)
    fresh = fresh.to(tensors.X.device)
    # Large groups first: shards of similar sizes, and the longest-running models start first.
    order = sorted(range(len(groups)), key=lambda g: -len(groups[g]))
    val, test = finetune_subsets(fresh, tensors, [tuple(groups[g]) for g in order], manifest.training,
                                 manifest.estimation.exact_batch, progress, backend, stage=stage, return_test=True)
    per_val = np.full(data.n_tasks, np.nan)
    per_test = np.full(data.n_tasks, np.nan)
    for row, g in enumerate(order):
        members = list(groups[g])
        per_val[members] = val[row, :len(members)]
        per_test[members] = test[row, :len(members)]
    return per_val, per_test



def validation_halves(tensors: TensorData, seed: int) -> tuple[TensorData, TensorData]:
    """The validation rows split in two by a seeded permutation of rows: (stop on A, score on B), (B, A)."""
    rows = torch.nonzero(tensors.val.any(dim=1)).squeeze(1).cpu()
    perm = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))]
    in_a = torch.zeros(tensors.val.shape[0], dtype=torch.bool)
    in_a[perm[: len(perm) // 2]] = True
    in_a = in_a.to(tensors.val.device)[:, None]
    a, b = tensors.val & in_a, tensors.val & ~in_a
    return (TensorData(tensors.X, tensors.Y, tensors.train, a, tensors.binary, b),
            TensorData(tensors.X, tensors.Y, tensors.train, b, tensors.binary, a))


def predicted_losses(data: SplitTable, tensors: TensorData, manifest: Manifest, groups: list[list[int]],
                     progress: Progress | None = None, backend: Backend | None = None,
                     stage: str = "group models") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-task validation loss of the grouping, on validation rows its models were not stopped on.

    Early stopping picks the best epoch on the validation rows, so the loss there is optimistic, the
    more so the fewer rows a model is stopped on (one task alone more than a big group): scored on
    those rows, small groups would look better than they are. So each grouping is trained twice,
    stopped on one half of the validation rows and scored on the other (cross-fitting), and a task's
    predicted loss is the row-weighted mean of its two scores. Returns (that mean, the scores on
    the second half, the scores on the first half)."""
    first, second = validation_halves(tensors, manifest.grouping.seed)
    _, on_b = train_groups(data, first, manifest, groups, progress, backend, stage=stage)
    _, on_a = train_groups(data, second, manifest, groups, progress, backend, stage=stage)
    n_b = first.test.sum(0).cpu().numpy().astype(float)
    n_a = second.test.sum(0).cpu().numpy().astype(float)
    total = np.where(n_a > 0, np.nan_to_num(on_a) * n_a, 0.0) + np.where(n_b > 0, np.nan_to_num(on_b) * n_b, 0.0)
    return total / np.maximum(n_a + n_b, 1), np.where(n_b > 0, on_b, np.nan), np.where(n_a > 0, on_a, np.nan)


__all__ = ["predicted_losses", "train_groups", "validation_halves"]
