"""Equal weighting: the mean of the per-task losses, one gradient step."""

from __future__ import annotations

import torch
from torch import nn


class EqualWeighting:
    name = "equal"

    def step(self, model: nn.Module, task_losses: torch.Tensor, optimizer: torch.optim.Optimizer,
             epoch: int, epochs: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        task_losses.mean().backward()
        optimizer.step()
