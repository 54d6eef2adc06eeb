"""Projected per-sample gradients of each task's raw output at the base model θ*.

For every labelled (row, task) pair, g = ∂f_task(x_row; θ)/∂θ at θ*, over a chosen parameter
set, projected to d dimensions on the fly. Rows are processed in chunks whose size is bounded
by the memory setting, so neither the N × p gradient matrix nor (for large p) the p × d
projection matrix is ever held. Per chunk, the gradients of linear layers come from one batched
backward as outer products, the rest from torch.func (vmap of grad); see per_sample_gradients.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from affinity.compute.base import Backend, LocalBackend
from affinity.models import model_layers, task_outputs
from affinity.progress import Progress
from affinity.projection import BlockProjector


class _TaskOutput(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        return task_outputs(self.model, x, tasks)


def select_parameters(model: nn.Module, which: str, last_layers: int = 1) -> list[str]:
    """Names of the parameters gradients are taken against: all, encoder (all but heads), last N layers."""
    layers = model_layers(model)
    if which == "all":
        names = [n for layer in layers for n in layer]
    elif which == "encoder":
        if len(layers) < 2:
            raise ValueError("estimation.params='encoder' needs a model with layers besides the heads")
        names = [n for layer in layers[:-1] for n in layer]
    elif which == "last":
        if last_layers > len(layers):
            raise ValueError(
                f"estimation.last_layers={last_layers} exceeds the model's {len(layers)} layers; use at most {len(layers)}"
            )
        names = [n for layer in layers[-last_layers:] for n in layer]
    else:
        raise ValueError(f"estimation.params={which!r} is not known; use all, encoder or last")
    params = dict(model.named_parameters())
    return [n for n in names if n in params and params[n].requires_grad]


@dataclass
class GradientFeatures:
    """Projected gradients and base outputs of the labelled (row, task) pairs."""

    features: np.ndarray  # (pairs, d) float32
    base_output: np.ndarray  # (pairs,) float32
    rows: np.ndarray  # (pairs,) int64
    tasks: np.ndarray  # (pairs,) int64
    n_params: int


def labelled_pairs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, tasks) of the set entries of a rows × tasks mask, ordered by task then row."""
    tasks, rows = np.nonzero(mask.T)
    return rows.astype(np.int64), tasks.astype(np.int64)


def per_sample_gradients(model: nn.Module, names: list[str], x: torch.Tensor, tasks: torch.Tensor) -> list[torch.Tensor]:
    """Per-row gradients of f_{tasks[b]}(x[b]) (see :func:`gradients_and_outputs`)."""
    return gradients_and_outputs(model, names, x, tasks)[0]


def gradients_and_outputs(model: nn.Module, names: list[str], x: torch.Tensor, tasks: torch.Tensor
                          ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Per-row gradients, and the outputs f_{tasks[b]}(x[b]) of the forward pass that gave them (None on the
    torch.func path). Per-row gradients of f_{tasks[b]}(x[b]) w.r.t. the named parameters, each flattened (batch × numel).

    Parameters of ``nn.Linear`` modules that run once per forward on 2-D inputs (or 3-D: a
    sequence per row, e.g. LoRA adapters in a transformer) get their per-sample gradients from one
    ordinary batched backward: in eval mode rows do not interact, so the backward of
    Σ_b f_{t_b}(x_b) leaves at each such layer the per-row signal δ_b = ∂f/∂z_b, and the row's
    weight gradient is the outer product δ_b a_bᵀ (bias: δ_b), a the layer's input, summed over the
    row's positions for sequences.
    Every other parameter (per-task heads, norms, layers of unknown kinds) goes through
    ``torch.func`` (:func:`vmap_per_sample_gradients`), which also serves as the reference.
    """
    linear = _linear_modules(model, names)
    if not linear:
        return vmap_per_sample_gradients(model, names, x, tasks), None
    captured: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {m: [] for m in linear}

    def capture(module_name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            captured[module_name].append((inputs[0], output))
        return hook

    modules = dict(model.named_modules())
    handles = [modules[m].register_forward_hook(capture(m)) for m in linear]
    try:
        with torch.enable_grad():
            out = task_outputs(model, x, tasks)
    finally:
        for h in handles:
            h.remove()
    usable = all(len(c) == 1 and c[0][0].dim() in (2, 3) and c[0][1].requires_grad for c in captured.values())
    if not usable:  # a layer called twice, on deeper inputs, or detached: the general path
        return vmap_per_sample_gradients(model, names, x, tasks), None
    order = list(linear)
    deltas = torch.autograd.grad(out.sum(), [captured[m][0][1] for m in order], allow_unused=True)
    by_name: dict[str, torch.Tensor] = {}
    for m, delta in zip(order, deltas):
        a = captured[m][0][0].detach()
        delta = torch.zeros_like(captured[m][0][1]) if delta is None else delta.detach()
        if a.dim() == 3:  # a sequence per row: the row's gradient sums its positions' outer products
            if f"{m}.weight" in linear[m]:
                by_name[f"{m}.weight"] = torch.einsum("bso,bsi->boi", delta, a).reshape(x.shape[0], -1)
            if f"{m}.bias" in linear[m]:
                by_name[f"{m}.bias"] = delta.sum(1)
            continue
        if f"{m}.weight" in linear[m]:
            by_name[f"{m}.weight"] = (delta[:, :, None] * a[:, None, :]).reshape(x.shape[0], -1)
        if f"{m}.bias" in linear[m]:
            by_name[f"{m}.bias"] = delta
    rest = [n for n in names if n not in by_name]
    if rest:
        by_name.update(zip(rest, vmap_per_sample_gradients(model, rest, x, tasks)))
    return [by_name[n] for n in names], out.detach()


def _linear_modules(model: nn.Module, names: list[str]) -> dict[str, set[str]]:
    """The nn.Linear modules owning some of ``names``, with the names they own."""
    wanted = set(names)
    found: dict[str, set[str]] = {}
    for module_name, module in model.named_modules():
        if type(module) is nn.Linear and module_name:
            owned = {f"{module_name}.{p}" for p, _ in module.named_parameters(recurse=False)} & wanted
            if owned:
                found[module_name] = owned
    return found


def vmap_per_sample_gradients(model: nn.Module, names: list[str], x: torch.Tensor, tasks: torch.Tensor
                              ) -> list[torch.Tensor]:
    """Per-row gradients by ``torch.func`` (vmap of grad): any model, any parameter."""
    compact = getattr(model, "compact_inputs", None)
    if compact is not None:  # e.g. token ids cut to the chunk's longest text: vmap runs on fixed shapes
        x = compact(x)
    wrapper = _TaskOutput(model)
    state = {f"model.{k}": v.detach() for k, v in model.named_parameters()}
    state.update({f"model.{k}": v for k, v in model.named_buffers()})
    trainable = {f"model.{n}": state.pop(f"model.{n}") for n in names}

    def out(params: dict[str, torch.Tensor], xi: torch.Tensor, ti: torch.Tensor) -> torch.Tensor:
        return functional_call(wrapper, {**state, **params}, (xi[None], ti[None]))[0]

    grads = vmap(grad(out), in_dims=(None, 0, 0))(trainable, x, tasks)
    return [grads[f"model.{n}"].reshape(x.shape[0], -1) for n in names]


def projected_gradients(
    model: nn.Module,
    X: torch.Tensor,
    rows: np.ndarray,
    tasks: np.ndarray,
    names: list[str],
    projector: BlockProjector,
    chunk_rows: int,
    memory_mb: int,
    progress: Progress | None = None,
    backend: Backend | None = None,
    shard_pairs: int = 16384,
    memmap_path: Path | None = None,
) -> GradientFeatures:
    """Projected per-sample gradients and base outputs for the given (row, task) pairs.

    The pairs are cut into shards of ``shard_pairs`` and each shard is computed by
    :func:`gradient_shard` on the backend (in this process, or as Ray tasks). The result is a
    float32 (pairs × d) array, memory-mapped at ``memmap_path`` when given.
    """
    model.eval()
    params = dict(model.named_parameters())
    p = sum(params[n].numel() for n in names)
    if p != projector.p:
        raise ValueError(f"projector expects p={projector.p}, parameter set has {p}")
    # Per chunk: the gradients (chunk × p) plus vmap's intermediates; keep ~3 copies in budget.
    chunk = max(1, min(chunk_rows, (memory_mb * 2**20) // (3 * 4 * max(p, 1))))
    backend = backend or LocalBackend()
    if memmap_path is not None:
        feats = np.lib.format.open_memmap(memmap_path, mode="w+", dtype=np.float32, shape=(len(rows), projector.d))
    else:
        feats = np.empty((len(rows), projector.d), dtype=np.float32)
    base = np.empty(len(rows), dtype=np.float32)
    progress = progress or Progress()
    progress.start("projected gradients", len(rows))
    bounds = [(a, min(a + shard_pairs, len(rows))) for a in range(0, len(rows), shard_pairs)]
    shards = [(rows[a:b], tasks[a:b]) for a, b in bounds]
    if backend.name == "local":
        shared = (model, X, names, projector, chunk)
    else:  # plain CPU objects travel; the projector is rebuilt from its seed on the node
        shared = (copy.deepcopy(model).cpu(), X.detach().cpu().numpy(), names, projector.spec(), chunk)
    results = backend.map(gradient_shard, shared, shards, progress, amounts=[b - a for a, b in bounds], gpu=True)
    for (a, b), (f, o) in zip(bounds, results):
        feats[a:b] = f
        base[a:b] = o
    progress.finish()
    return GradientFeatures(features=feats, base_output=base, rows=rows, tasks=tasks, n_params=p)


def gradient_shard(model: nn.Module, X: torch.Tensor | np.ndarray, names: list[str],
                   projector: BlockProjector | dict, chunk: int, shard: tuple[np.ndarray, np.ndarray],
                   progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Projected gradients (n × d, float32) and base outputs (n,) of one shard of (row, task) pairs.

    A pure function of its inputs: on a Ray node ``X`` arrives as numpy and the projector as its
    spec; the node's GPU is used when it has one.
    """
    rows, tasks = shard
    if not isinstance(X, torch.Tensor):
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        X = torch.as_tensor(X, device=device)
        model = model.to(device)
    device = X.device
    if isinstance(projector, dict):
        projector = BlockProjector.from_spec(projector, device, cache_bytes=256 * 2**20)
    model.eval()
    feats = np.empty((len(rows), projector.d), dtype=np.float32)
    base = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), chunk):
        r = torch.as_tensor(rows[start:start + chunk], device=device)
        t = torch.as_tensor(tasks[start:start + chunk], device=device)
        x = X[r]
        segments, out = gradients_and_outputs(model, names, x, t)  # the base outputs of the same forward pass
        feats[start:start + len(r)] = projector.project_segments(segments).float().cpu().numpy()
        if out is None:
            with torch.no_grad():
                out = task_outputs(model, x, t)
        base[start:start + len(r)] = out.float().cpu().numpy()
        if progress is not None:
            progress.advance(len(r))
            progress.check_cancelled()
    return feats, base
