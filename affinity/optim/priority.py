"""Connection strength and the task priority it defines (Jeong & Yoon, CVPR 2024; method notes §2).

For a shared layer W (output units p, inputs q) followed by per-task normalization with scale
γ_τ and running variance Var^τ, the connection strength of unit p for task τ is

    S_p^τ = γ_{τ,p}² / (Var_p^τ + ε) · Σ_q W[p, q]²,    Ŝ_p^τ = S_p^τ / Σ_p' S_p'^τ,

and the top-priority task of unit p is argmax_τ Ŝ_p^τ (over the tasks being trained). The learned
task priority reported to the user is, per shared layer, the share of units whose top task is t.
Everything here is detached and batched over tasks × units.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


@torch.no_grad()
def connection_strength(weight: torch.Tensor, gamma: torch.Tensor, var: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Ŝ (tasks × units): ``weight`` (units × inputs…), ``gamma`` and ``var`` (tasks × units)."""
    w2 = weight.detach().flatten(1).pow(2).sum(1)  # (units,) — conv kernels summed over the kernel too
    s = gamma.detach().pow(2) / (var.detach() + eps) * w2
    return s / s.sum(dim=1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)


@torch.no_grad()
def top_priority(strength: torch.Tensor, tasks: torch.Tensor | None = None) -> torch.Tensor:
    """Top-priority task (model task index) of every unit, among ``tasks`` (default: all)."""
    if tasks is None:
        return strength.argmax(dim=0)
    return tasks[strength[tasks].argmax(dim=0)]


def layer_priorities(model: nn.Module, tasks: torch.Tensor | None = None) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(layer name, Ŝ (tasks × units), top task per unit) for every shared layer with task norms."""
    if not hasattr(model, "task_norm_layers") or not model.task_norm_layers():
        raise ValueError("connection strength needs per-task normalization after the shared layers; "
                         "set model.task_norm to true")
    out = []
    for name, layer, norm in model.task_norm_layers():
        s = connection_strength(layer.weight, norm.weight, norm.running_var, norm.eps)
        out.append((name, s, top_priority(s, tasks)))
    return out


def task_priority(model: nn.Module, tasks: torch.Tensor | None = None) -> dict[str, Any]:
    """Learned task priority by task index: per shared layer, the share of units whose top task is t.

    ``{"layers": [{"layer", "units", "share": [n_tasks floats], "top_task": [units ints]}]}``;
    tasks outside ``tasks`` have share 0.
    """
    layers = []
    for name, s, top in layer_priorities(model, tasks):
        counts = torch.bincount(top, minlength=s.shape[0]).double()
        layers.append({"layer": name, "units": int(top.numel()),
                       "share": (counts / top.numel()).tolist(), "top_task": top.tolist()})
    return {"layers": layers}


def priority_record(priority: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """``task_priority``'s result with task names, as written to priority.json."""
    return {
        "definition": "per shared layer, the share of its units whose top-priority task (largest "
                      "normalized connection strength γ²/(Var+ε)·Σ_q W[p,q]²) is the task",
        "tasks": names,
        "layers": [{
            "layer": layer["layer"], "units": layer["units"],
            "share": {names[t]: share for t, share in enumerate(layer["share"]) if share > 0},
            "top_task": [names[t] for t in layer["top_task"]],
        } for layer in priority["layers"]],
        **{k: v for k, v in priority.items() if k != "layers"},
    }
