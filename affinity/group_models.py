"""One model per group, trained from scratch as a user would train it after our advice.

Every group model is the manifest's model at its initialization seed, trained on the group's
tasks with the manifest's loss, optimizer and early stopping (on the group's validation loss);
all groups of a grouping are stacked and trained together (``finetune_subsets`` on a fresh
model). Returns each task's validation loss and, where the data holds test rows, its test loss
under the model of its group.
"""

from __future__ import annotations

import numpy as np

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


__all__ = ["train_groups"]
