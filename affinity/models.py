"""Multitask models: a shared encoder and one raw output (logit or value) per task.

The interface the rest of the engine relies on (any ``nn.Module`` that has it works):

- ``n_tasks``: number of tasks;
- ``forward(x) -> (batch, n_tasks)``: every task's raw output for every row;
- optionally ``forward_tasks(x, tasks) -> (batch,)``: the output of task ``tasks[b]`` for row b
  (defaults to gathering from ``forward``);
- optionally ``layers() -> list[list[str]]``: parameter names per layer from input to output,
  the output heads last (used to take gradients of the last N layers only);
- optionally ``task_parameters() -> list[str]``: the task-specific parameters, axis 0 indexing the
  task (default: the last layer); the multitask optimizers aggregate the others (shared);
- optionally ``task_norm_layers()``: each shared layer with its per-task normalization
  (needed by ``training.mtl_method = connection_strength``);
- optionally ``takes_mask = True``: ``forward(x, mask=None, tasks=None)`` takes the batch's label
  mask (rows × tasks; per-task normalization statistics over each task's own rows) and the task
  indices to compute (as ``MultiTaskMLP`` does);
- optionally ``compact_inputs(x)``: a batch of inputs in the shortest form the model gives the
  same outputs for (a transformer cuts token ids to the batch's longest text); the per-sample
  gradients call it once per chunk, before ``torch.func.vmap`` fixes the shapes;
- optionally ``max_batch_rows``: rows per batch of no-grad evaluation (default 8192);
- optionally ``trainable_counts() -> dict[str, int]``: parameter counts by part (``lora``, ``neck``,
  ``heads``; as the transformer gives them) that the job record and the dashboard show beside the
  whole model's and the trained ones (api/jobproc.py ``model_summary``).

Parameters with ``requires_grad`` False are frozen: not trained, not differentiated, not projected.
Which kind of model a manifest builds is affinity/kinds.py's business (``model.kind``).
"""

from __future__ import annotations

import torch
from torch import nn

from affinity.manifest import ModelSpec

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def _transformed(t: torch.Tensor) -> bool:
    """Whether ``t`` is inside a torch.func transform (grad, vmap): a pure function there, so the running
    statistics are read but not updated (e.g. TAG's lookahead steps leave the model's statistics alone)."""
    return torch._C._functorch.is_functorch_wrapped_tensor(t)


def update_task_statistics(norm: nn.Module, idx: torch.Tensor, enough: torch.Tensor, batch_mean: torch.Tensor,
                           batch_var: torch.Tensor, count: torch.Tensor, h: torch.Tensor) -> None:
    """Move ``norm``'s running statistics of tasks ``idx`` toward a batch's (where ``enough`` of their rows are
    labelled; ``count``: values per statistic, for the unbiased variance), except inside a torch.func
    transform (there the forward is a pure function)."""
    if _transformed(h) or _transformed(norm.weight):
        return
    with torch.no_grad():
        run_mean, run_var = norm.running_mean[idx], norm.running_var[idx]
        unbiased = batch_var.detach() * (count / (count - 1).clamp_min(1))
        norm.running_mean[idx] = torch.where(enough, run_mean.lerp(batch_mean.detach(), norm.momentum), run_mean)
        norm.running_var[idx] = torch.where(enough, run_var.lerp(unbiased, norm.momentum), run_var)


class TaskNorm(nn.Module):
    """Per-task batch normalization of a shared layer's units.

    Input ``(batch, units)`` (the same activations for every task, after the first shared layer)
    or ``(batch, tasks, units)``; output ``(batch, tasks, units)``. Each task has its own scale
    γ_t, shift β_t and running mean/variance.

    Statistics are kept apart per task: in training mode with a ``mask`` (rows × tasks, the rows
    labelled for each task), task t is normalized with the mean and variance of *its own* labelled
    rows of the batch, and only tasks with at least two such rows update their running statistics;
    a task with fewer uses its running statistics and leaves them unchanged. ``tasks`` restricts the
    computation to some tasks' paths (``(batch, len(tasks), units)``): the other tasks' statistics
    are neither used nor changed. Without a mask (the engine's gradient paths, which run in eval
    mode), every row counts for every task, as in plain batch normalization. Inside a torch.func
    transform the running statistics are not updated.
    """

    def __init__(self, n_tasks: int, units: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(n_tasks, units))
        self.bias = nn.Parameter(torch.zeros(n_tasks, units))
        self.register_buffer("running_mean", torch.zeros(n_tasks, units))
        self.register_buffer("running_var", torch.ones(n_tasks, units))

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None,
                tasks: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None and tasks is None:
            return self._forward_all_rows(h)
        idx = tasks if tasks is not None else torch.arange(self.weight.shape[0], device=h.device)
        k = idx.shape[0]
        if h.dim() == 2:
            h = h.unsqueeze(1).expand(-1, k, -1)
        run_mean, run_var = self.running_mean[idx], self.running_var[idx]
        if self.training and h.shape[0] > 1:
            m = (mask[:, idx] if mask is not None else torch.ones(h.shape[0], k, dtype=torch.bool,
                                                                 device=h.device)).to(h.dtype)
            n = m.sum(dim=0)  # (k,) labelled rows per task
            enough = (n >= 2)[:, None]
            c = n.clamp_min(1)[:, None]
            batch_mean = torch.einsum("bk,bku->ku", m, h) / c
            batch_var = torch.einsum("bk,bku->ku", m, (h - batch_mean) ** 2) / c
            mean = torch.where(enough, batch_mean, run_mean)
            var = torch.where(enough, batch_var, run_var)
            update_task_statistics(self, idx, enough, batch_mean, batch_var, c, h)
        else:
            mean, var = run_mean, run_var
        return (h - mean) / torch.sqrt(var + self.eps) * self.weight[idx] + self.bias[idx]

    def _forward_all_rows(self, h: torch.Tensor) -> torch.Tensor:
        if h.dim() == 2:
            h = h.unsqueeze(1).expand(-1, self.weight.shape[0], -1)
        if self.training and h.shape[0] > 1:
            mean = h.mean(dim=0)
            var = h.var(dim=0, unbiased=False)
            if not (_transformed(h) or _transformed(self.weight)):
                with torch.no_grad():
                    n = h.shape[0]
                    self.running_mean.lerp_(mean.detach(), self.momentum)
                    self.running_var.lerp_(var.detach() * n / max(n - 1, 1), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return (h - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias

    def forward_rows(self, h: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        """Eval-mode normalization of row b with the statistics of task ``tasks[b]``."""
        mean, var = self.running_mean[tasks], self.running_var[tasks]
        return (h - mean) / torch.sqrt(var + self.eps) * self.weight[tasks] + self.bias[tasks]


class MultiTaskMLP(nn.Module):
    """MLP encoder (Linear → [TaskNorm] → activation → dropout, per width) and per-task heads."""

    def __init__(self, n_features: int, n_tasks: int, spec: ModelSpec) -> None:
        super().__init__()
        self.n_tasks = n_tasks
        self.task_norm = spec.task_norm
        widths = [n_features, *spec.hidden]
        self.shared = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.norms = nn.ModuleList(TaskNorm(n_tasks, b) for b in spec.hidden) if spec.task_norm else None
        self.act = ACTIVATIONS[spec.activation]()
        self.drop = nn.Dropout(spec.dropout)
        self.head_weight = nn.Parameter(torch.empty(n_tasks, widths[-1]))
        self.head_bias = nn.Parameter(torch.zeros(n_tasks))
        nn.init.normal_(self.head_weight, std=widths[-1] ** -0.5)

    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None,
               tasks: torch.Tensor | None = None) -> torch.Tensor:
        """Shared representation: ``(batch, units)``, or ``(batch, tasks, units)`` with task norms.

        ``mask`` (rows × tasks) and ``tasks`` (indices) reach the task norms: see :class:`TaskNorm`.
        """
        h = x
        for i, layer in enumerate(self.shared):
            h = layer(h)
            if self.norms is not None:
                h = self.norms[i](h) if mask is None and tasks is None else self.norms[i](h, mask, tasks)
            h = self.drop(self.act(h))
        return h

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                tasks: torch.Tensor | None = None) -> torch.Tensor:
        """Raw outputs ``(batch, n_tasks)``, or ``(batch, len(tasks))`` for the given task indices.

        ``mask``: rows × tasks, the rows labelled for each task (training-mode task-norm statistics).
        """
        h = self.encode(x, mask, tasks)
        w, b = (self.head_weight, self.head_bias) if tasks is None else (self.head_weight[tasks], self.head_bias[tasks])
        if h.dim() == 3:
            return (h * w).sum(-1) + b
        return h @ w.T + b

    def forward_tasks(self, x: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        if self.norms is None:
            h = self.encode(x)
        else:
            if self.training:
                return self.forward(x).gather(1, tasks[:, None]).squeeze(1)
            h = x
            for layer, norm in zip(self.shared, self.norms):
                h = self.drop(self.act(norm.forward_rows(layer(h), tasks)))
        return (h * self.head_weight[tasks]).sum(-1) + self.head_bias[tasks]

    def task_parameters(self) -> list[str]:
        """Names of the task-specific parameters; axis 0 of each indexes the task."""
        names = ["head_weight", "head_bias"]
        if self.norms is not None:
            names += [f"norms.{i}.{p}" for i in range(len(self.norms)) for p in ("weight", "bias")]
        return names

    def task_norm_layers(self) -> list[tuple[str, nn.Linear, TaskNorm]]:
        """Each shared layer with the per-task normalization that follows it (empty without task norms)."""
        if self.norms is None:
            return []
        return [(f"shared.{i}", layer, norm) for i, (layer, norm) in enumerate(zip(self.shared, self.norms))]

    def layers(self) -> list[list[str]]:
        groups = []
        for i in range(len(self.shared)):
            names = [f"shared.{i}.weight", f"shared.{i}.bias"]
            if self.norms is not None:
                names += [f"norms.{i}.weight", f"norms.{i}.bias"]
            groups.append(names)
        groups.append(["head_weight", "head_bias"])
        return groups


def build_model(spec: ModelSpec, n_features: int, n_tasks: int, seed: int) -> MultiTaskMLP:
    torch.manual_seed(seed)
    return MultiTaskMLP(n_features, n_tasks, spec)


def task_outputs(model: nn.Module, x: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
    """Output of task ``tasks[b]`` for row b, for any model with the interface above."""
    if hasattr(model, "forward_tasks"):
        return model.forward_tasks(x, tasks)
    return model(x).gather(1, tasks[:, None]).squeeze(1)


def task_parameter_names(model: nn.Module) -> list[str]:
    """Task-specific parameters (axis 0 = task): the model's own list, else the last layer (heads)."""
    if hasattr(model, "task_parameters"):
        return model.task_parameters()
    return model_layers(model)[-1]


def task_forward(model: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None,
                 tasks: torch.Tensor | None = None) -> torch.Tensor:
    """Training-mode outputs ``(batch, n_tasks)`` (or of ``tasks`` only), passing the label mask
    to models that take one (per-task normalization statistics over each task's own rows)."""
    if isinstance(model, MultiTaskMLP) or getattr(model, "takes_mask", False):
        return model(x, mask=mask, tasks=tasks)
    out = model(x)
    return out if tasks is None else out[:, tasks]


def model_layers(model: nn.Module) -> list[list[str]]:
    """Parameter names per layer, input to output (heads last)."""
    if hasattr(model, "layers"):
        return model.layers()
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        groups.setdefault(name.rsplit(".", 1)[0], []).append(name)
    return list(groups.values())
