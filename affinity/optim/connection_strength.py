"""Connection-strength multitask optimization (Jeong & Yoon, CVPR 2024), from the method notes §2.

Two kinds of step, chosen per batch by the switching schedule:

- **Phase 1 (learn priority):** for each present task in turn, on the same batch: zero the
  gradients, back-propagate that task's loss alone (only that task's path is run, so only its
  normalization statistics move), take an optimizer step. The other tasks' own parameters (their
  head rows and norm scales, which share tensors with this task's) are put back after the step so
  that Adam's momentum does not move them on another task's turn.
- **Phase 2 (keep priority):** every present task's gradient of the shared layers (one vectorized
  Jacobian). Per shared layer, the units are grouped by their top-priority task i (largest
  normalized connection strength, see :mod:`affinity.optim.priority`); within group i, every other
  task j whose gradient over the group's units (weights and biases of those units, flattened) has
  G_i·G_j < 0 is projected onto the normal plane of G_i: G_j ← G_j − (G_i·G_j / ‖G_i‖²) G_i. The
  (projected) task gradients are summed. A layer whose units all have one top task, and every
  shared parameter outside such layers, takes the plain sum; task-specific parameters take each
  task's own gradient.
- **Switching:** per batch u ~ U(0, 1) (seeded from ``training.seed``); phase 1 when u ≥ e/E, where
  e is the current epoch (1-based) and E is ``training.connection_strength.schedule_epochs``
  (default ``training.epochs``); otherwise phase 2.

The projection is batched over tasks × units: no loop over tasks or groups per parameter tensor.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchjd.autojac import jac

from affinity.manifest import TrainingSpec
from affinity.models import task_parameter_names
from affinity.optim.base import TaskBatch
from affinity.optim.priority import layer_priorities, task_priority
from affinity.optim.torchjd_methods import split_parameters


def project_conflicts(grads: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """Phase-2 projection of one layer's per-task gradients.

    ``grads``: (tasks, units, q), task j's gradient for the q parameters of each unit; ``top``:
    (units,), the position in the task axis of each unit's top-priority task, −1 when that task
    has no gradient in this batch (its group is left as is). Returns the projected gradients.
    """
    n_tasks, n_units, _ = grads.shape
    valid = top >= 0
    pos = top.clamp_min(0)
    g_top = grads[pos, torch.arange(n_units, device=grads.device)] * valid[:, None]  # (units, q)
    groups = torch.nn.functional.one_hot(pos, n_tasks).to(grads.dtype) * valid[:, None]  # (units, groups)
    dots = torch.einsum("tuq,uq->tu", grads, g_top) @ groups  # (tasks, groups): G_j · G_i
    norms = g_top.pow(2).sum(1) @ groups  # (groups,): ‖G_i‖²
    coef = torch.where(norms > 0, dots.clamp_max(0) / norms.clamp_min(torch.finfo(grads.dtype).tiny), 0.0)
    per_unit = coef[:, pos] * valid  # (tasks, units)
    return grads - per_unit[:, :, None] * g_top[None]


class ConnectionStrength:
    name = "connection_strength"

    def __init__(self, seed: int = 0, schedule_epochs: int | None = None) -> None:
        self.schedule_epochs = schedule_epochs
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.phase_counts: dict[int, list[int]] = {}  # epoch → [phase-1 batches, phase-2 batches]

    @classmethod
    def from_spec(cls, spec: TrainingSpec) -> "ConnectionStrength":
        return cls(seed=spec.seed, schedule_epochs=spec.connection_strength.schedule_epochs)

    def phase(self, epoch: int, epochs: int) -> int:
        """1 or 2 for the next batch: phase 2 with probability e/E."""
        total = self.schedule_epochs or epochs
        u = float(torch.rand((), generator=self.gen))
        phase = 1 if u >= epoch / total else 2
        self.phase_counts.setdefault(epoch, [0, 0])[phase - 1] += 1
        return phase

    def step(self, batch: TaskBatch, optimizer: torch.optim.Optimizer, epoch: int, epochs: int) -> None:
        if self.phase(epoch, epochs) == 1:
            self.phase1_step(batch, optimizer)
        else:
            self.phase2_step(batch, optimizer)

    def phase1_step(self, batch: TaskBatch, optimizer: torch.optim.Optimizer) -> None:
        own = dict(batch.model.named_parameters())
        own = [own[n] for n in task_parameter_names(batch.model)]
        for t in batch.tasks:
            optimizer.zero_grad(set_to_none=True)
            batch.losses(t[None]).sum().backward()
            keep = [p.detach().clone() for p in own]
            optimizer.step()
            with torch.no_grad():
                for p, old in zip(own, keep):
                    others = torch.ones(p.shape[0], dtype=torch.bool, device=p.device)
                    others[t] = False
                    p[others] = old[others]

    def phase2_gradients(self, batch: TaskBatch) -> dict[nn.Parameter, torch.Tensor]:
        """Parameter → phase-2 update direction (before the optimizer), and the per-layer
        projected task gradients in ``self.last_projected`` (for inspection and tests)."""
        model = batch.model
        losses = batch.losses()
        layers = layer_priorities(model, batch.selected)
        layer_params = []
        for name, _, _ in layers:
            layer = model.get_submodule(name)
            layer_params.append([layer.weight] + ([layer.bias] if layer.bias is not None else []))
        in_layers = {id(p) for ps in layer_params for p in ps}
        shared, own = split_parameters(model)
        rest = own + [p for p in shared if id(p) not in in_layers]
        out: dict[nn.Parameter, torch.Tensor] = {}
        if rest:
            for p, g in zip(rest, torch.autograd.grad(losses.sum(), rest, retain_graph=True, allow_unused=True)):
                if g is not None:
                    out[p] = g
        flat = [p for ps in layer_params for p in ps]
        jacs = iter(jac(losses, flat))
        position = torch.full((model.n_tasks,), -1, dtype=torch.long, device=losses.device)
        position[batch.tasks] = torch.arange(len(batch.tasks), device=losses.device)
        self.last_projected = []
        for (name, _, top), ps in zip(layers, layer_params):
            parts = [next(jacs) for _ in ps]
            n = len(batch.tasks)
            g = torch.cat([j.reshape(n, j.shape[1], -1) for j in parts], dim=2)  # (tasks, units, q)
            if torch.unique(top).numel() > 1:
                g = project_conflicts(g, position[top])
            self.last_projected.append((name, g, position[top]))
            update = g.sum(0)
            start = 0
            for p in ps:
                size = p[0].numel()
                out[p] = update[:, start:start + size].reshape(p.shape)
                start += size
        return out

    def phase2_step(self, batch: TaskBatch, optimizer: torch.optim.Optimizer) -> None:
        grads = self.phase2_gradients(batch)
        optimizer.zero_grad(set_to_none=True)
        for p, g in grads.items():
            p.grad = g
        optimizer.step()

    def priority(self, model: nn.Module, tasks: torch.Tensor) -> dict[str, Any]:
        """The learned task priority of ``model`` (see ``priority.task_priority``) and the phases run."""
        steps = [sum(c[0] for c in self.phase_counts.values()), sum(c[1] for c in self.phase_counts.values())]
        return {**task_priority(model, tasks), "phase1_batches": steps[0], "phase2_batches": steps[1]}
