"""Equal weighting: the mean of the per-task losses, one gradient step."""

from __future__ import annotations

import torch

from affinity.optim.base import TaskBatch


class EqualWeighting:
    name = "equal"

    def step(self, batch: TaskBatch, optimizer: torch.optim.Optimizer, epoch: int, epochs: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        batch.losses().mean().backward()
        optimizer.step()
