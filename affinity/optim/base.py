"""The interface every multitask optimizer implements."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class MTLMethod(Protocol):
    name: str

    def step(self, model: nn.Module, task_losses: torch.Tensor, optimizer: torch.optim.Optimizer,
             epoch: int, epochs: int) -> None:
        """Turn the batch's per-task losses (1-D, tasks present in the batch) into one update."""
        ...
