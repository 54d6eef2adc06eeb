"""The interface every multitask optimizer implements, and the batch it sees."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from affinity.losses import masked_task_means, pointwise_loss
from affinity.models import task_forward


@dataclass
class TaskBatch:
    """One minibatch as a multitask optimizer sees it.

    ``mask`` (rows × tasks) marks the training labels of the tasks being trained; ``tasks`` are the
    indices of the tasks with at least one such row (the present tasks), ``selected`` the indices
    of every task being trained. :meth:`losses` runs the model forward (training mode, so each call
    also updates per-task normalization statistics) and returns the per-task mean losses.
    """

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    binary: torch.Tensor
    tasks: torch.Tensor
    selected: torch.Tensor

    def losses(self, tasks: torch.Tensor | None = None) -> torch.Tensor:
        """Per-task mean training loss of ``tasks`` (default: the present tasks), 1-D, with graph.

        With ``tasks`` given, only those tasks' paths are computed (the other tasks' normalization
        statistics are untouched).
        """
        if tasks is None:
            out = task_forward(self.model, self.x, self.mask)
            losses, counts = masked_task_means(pointwise_loss(out, self.y, self.binary), self.mask)
            return losses[counts > 0]
        out = task_forward(self.model, self.x, self.mask, tasks)
        losses, _ = masked_task_means(pointwise_loss(out, self.y[:, tasks], self.binary[tasks]), self.mask[:, tasks])
        return losses


class MTLMethod(Protocol):
    name: str

    def step(self, batch: TaskBatch, optimizer: torch.optim.Optimizer, epoch: int, epochs: int) -> None:
        """Turn the batch's per-task losses into parameter updates (``epoch`` counts from 1 to ``epochs``)."""
        ...
