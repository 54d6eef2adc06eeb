"""Per-example losses of raw outputs: BCE on logits for binary tasks, squared error for regression."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pointwise_loss(z: torch.Tensor, y: torch.Tensor, binary: torch.Tensor) -> torch.Tensor:
    """Loss of raw output ``z`` against label ``y``; ``binary`` (bool, broadcastable) picks the kind."""
    bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    return torch.where(binary, bce, (z - y) ** 2)


def masked_task_means(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task mean of ``values`` (rows × tasks) over the rows where ``mask`` is set.

    Returns the means (0 where a task has no rows) and the per-task row counts.
    """
    m = mask.to(values.dtype)
    counts = m.sum(dim=0)
    sums = (values * m).sum(dim=0)
    return sums / counts.clamp_min(1), counts
