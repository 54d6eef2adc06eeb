"""The classic multitask optimizers, as torchjd aggregators over the shared parameters' Jacobian.

Each task's loss has a gradient with respect to the shared parameters (every parameter that is not
task-specific, see ``models.task_parameter_names``): the rows of the Jacobian J (present tasks ×
shared parameters). An aggregator A of ``torchjd.aggregation`` turns J into one update direction
A(J) for the shared parameters; task-specific parameters (heads, per-task norms) receive the sum of
the task gradients, which for each task's own slice is just that task's gradient. This is what
``torchjd.autojac.mtl_backward`` does for a model with separate heads; our heads share one tensor
(axis 0 = task), so the split is by parameter name instead of by the features tensor.

The Jacobian is computed in one vectorized backward (torchjd's ``autojac.backward``, vmap over the
tasks), not one backward per task.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn
from torchjd import aggregation as agg
from torchjd.autojac import backward as jac_backward
from torchjd.autojac import jac_to_grad

from affinity.models import task_parameter_names
from affinity.optim.base import TaskBatch


def split_parameters(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(shared, task-specific) trainable parameters of ``model``."""
    specific = set(task_parameter_names(model))
    shared, own = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (own if name in specific else shared).append(p)
    return shared, own


def aggregate_step(model: nn.Module, losses: torch.Tensor, aggregator: agg.Aggregator,
                   optimizer: torch.optim.Optimizer) -> None:
    """Shared parameters ← A(J), task-specific ← Σ task gradients, then one optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    shared, own = split_parameters(model)
    if own:
        grads = torch.autograd.grad(losses.sum(), own, retain_graph=True, allow_unused=True)
        for p, g in zip(own, grads):
            p.grad = g
    shared = [p for p in shared if p.requires_grad]
    if shared:
        jac_backward(losses, inputs=shared)
        jac_to_grad(shared, aggregator)
    optimizer.step()


# name → aggregator, given the number of tasks in the batch
AGGREGATORS: dict[str, Callable[[int], agg.Aggregator]] = {
    "upgrad": lambda m: agg.UPGrad(),
    "mgda": lambda m: agg.MGDA(),
    "pcgrad": lambda m: agg.PCGrad(),
    "cagrad": lambda m: agg.CAGrad(c=0.5),
    "nash_mtl": lambda m: agg.NashMTL(n_tasks=m),
    "imtl_g": lambda m: agg.IMTLG(),
    "aligned_mtl": lambda m: agg.AlignedMTL(),
    "dualproj": lambda m: agg.DualProj(),
    "graddrop": lambda m: agg.GradDrop(),
}


class TorchJDMethod:
    """One torchjd aggregator as an ``MTLMethod`` (settings: torchjd's defaults; CAGrad c = 0.5).

    Nash-MTL keeps state between batches (its previous weights, one per task); its state is kept
    while the set of present tasks stays the same and reset when it changes.
    """

    def __init__(self, name: str) -> None:
        if name not in AGGREGATORS:
            raise ValueError(f"training.mtl_method={name!r} is not a torchjd method; use one of {sorted(AGGREGATORS)}")
        self.name = name
        self._aggregator: agg.Aggregator | None = None
        self._tasks: tuple[int, ...] | None = None

    def aggregator(self, tasks: torch.Tensor) -> agg.Aggregator:
        key = tuple(tasks.tolist())
        if self._aggregator is None or (self.name == "nash_mtl" and key != self._tasks):
            self._aggregator = AGGREGATORS[self.name](len(key))
            self._tasks = key
        return self._aggregator

    def step(self, batch: TaskBatch, optimizer: torch.optim.Optimizer, epoch: int, epochs: int) -> None:
        with warnings.catch_warnings():
            # Nash-MTL's cvxpy problem is not DPP; cvxpy warns on every solve, nothing to act on.
            warnings.filterwarnings("ignore", message="You are solving a parameterized problem that is not DPP")
            aggregate_step(batch.model, batch.losses(), self.aggregator(batch.tasks), optimizer)

