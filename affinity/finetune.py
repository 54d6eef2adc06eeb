"""Really fine-tuning the base model on many task subsets at once (the exact estimator's engine).

Each subset gets its own copy of θ*, trained exactly as ``training.train_model(tasks=S)`` would:
the same minibatches of S's training rows (the same seeded permutation per epoch), the same
per-task masked loss averaged over tasks, Adam with the same settings, and early stopping on
the mean validation loss of S's tasks, keeping the best state. The copies are stacked
(the trainable parameters, one copy per subset) and stepped together with ``vmap``; a copy that has run out of
rows for the epoch, or has stopped, is masked out of the update.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from affinity.compute.base import Backend, LocalBackend, shard_batch
from affinity.losses import masked_task_means, pointwise_loss
from affinity.manifest import TrainingSpec
from affinity.progress import Progress
from affinity.training import TensorData, evaluate_losses, train_model


def _adam_update(params, grads, state, active, spec: TrainingSpec, betas=(0.9, 0.999), eps=1e-8) -> None:
    """torch.optim.Adam (L2 weight decay added to the gradient) applied where ``active`` (copies,)."""
    state["step"] += active.to(state["step"].dtype)
    t = state["step"]
    b1, b2 = betas
    for name, p in params.items():
        shape = (-1,) + (1,) * (p.dim() - 1)
        on = active.view(shape)
        g = grads[name] + spec.weight_decay * p if spec.weight_decay else grads[name]
        m = torch.where(on, b1 * state["m"][name] + (1 - b1) * g, state["m"][name])
        v = torch.where(on, b2 * state["v"][name] + (1 - b2) * g * g, state["v"][name])
        state["m"][name], state["v"][name] = m, v
        tt = t.clamp_min(1).view(shape)
        denom = (v.sqrt() / torch.sqrt(1 - b2 ** tt)) + eps
        update = (spec.lr / (1 - b1 ** tt)) * m / denom
        params[name] = torch.where(on, p - update, p)


def finetune_subsets(model: nn.Module, data: TensorData, subsets: list[tuple[int, ...]], spec: TrainingSpec,
                     batch_subsets: int = 16, progress: Progress | None = None,
                     backend: Backend | None = None, stage: str = "exact fine-tuning",
                     return_test: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Validation loss of every task of every subset after really training ``model`` on the subset.

    ``model`` is θ* (fine-tuning: the exact estimator) or a fresh initialization (training from
    scratch: the scratch estimator, group models). Returns ``(len(subsets), max size)`` with NaN
    padding; with ``return_test`` also the held-out test losses of the same (best-validation)
    states. Batches of ``batch_subsets`` subsets
    are shards (:func:`finetune_shard`) run on the backend. Models with buffers (per-task
    normalization statistics), and any ``spec.mtl_method`` other than equal weighting, are
    fine-tuned one subset at a time with ``train_model`` inside their shard.
    """
    size = max(len(s) for s in subsets)
    out = np.full((2, len(subsets), size), np.nan)
    backend = backend or LocalBackend()
    batch_subsets = shard_batch(backend, len(subsets), batch_subsets)
    progress = progress or Progress()
    progress.start(stage, len(subsets))
    chunks = [subsets[a:a + batch_subsets] for a in range(0, len(subsets), batch_subsets)]
    if backend.name == "local":
        shared = (model, data, spec, None, return_test)
    else:
        shared = (copy.deepcopy(model).cpu(), data.to("cpu"), spec, "auto", return_test)
    results = backend.map(finetune_shard, shared, chunks, progress, amounts=[len(c) for c in chunks], gpu=True)
    start = 0
    for chunk, losses in zip(chunks, results):
        out[:, start:start + len(chunk), :losses.shape[2]] = losses
        start += len(chunk)
    progress.finish()
    return (out[0], out[1]) if return_test else out[0]


def finetune_shard(model: nn.Module, data: TensorData, spec: TrainingSpec, device: str | None, with_test: bool,
                   chunk: list[tuple[int, ...]], progress: Progress | None = None) -> np.ndarray:
    """Per subset of ``chunk``, its tasks' validation and (``with_test``) test losses after training ``model`` on it.

    Returns ``(2, len(chunk), max size)``: [0] validation, [1] held-out test (NaN-padded; NaN
    where a task has no test rows, and everywhere without ``with_test``: the estimators read validation
    losses only, and a transformer's pass over the test rows costs about what its training does).
    ``model`` is left as it came. ``device`` "auto" moves model and data to this node's GPU when present.
    """
    if device == "auto" and torch.cuda.is_available():
        model, data = model.to("cuda"), data.to("cuda")
    size = max(len(s) for s in chunk)
    out = np.full((2, len(chunk), size), np.nan)
    base_state = copy.deepcopy(model.state_dict())
    has_test = with_test and bool(data.test.any())
    if spec.mtl_method != "equal" or any(True for _ in model.buffers()):
        for i, s in enumerate(chunk):
            model.load_state_dict(base_state)
            res = train_model(model, data, spec, tasks=torch.tensor(s, device=data.X.device), stage="exact")
            out[0, i, :len(s)] = res.task_val_loss[list(s)]
            if has_test:  # the test rows of the subset's tasks only
                mask = torch.zeros_like(data.test)
                mask[:, list(s)] = data.test[:, list(s)]
                test = evaluate_losses(model, data, mask).cpu().numpy()[list(s)]
                out[1, i, :len(s)] = np.where(data.test[:, list(s)].any(0).cpu().numpy(), test, np.nan)
            if progress is not None:
                progress.advance()
                progress.check_cancelled()
        model.load_state_dict(base_state)
        return out
    losses, test_losses = _finetune_chunk(model, data, chunk, spec, has_test)
    for b, s in enumerate(chunk):
        out[0, b, :len(s)] = losses[b, list(s)]
        out[1, b, :len(s)] = test_losses[b, list(s)]
    model.load_state_dict(base_state)
    if progress is not None:
        progress.advance(len(chunk))
        progress.check_cancelled()
    return out


def _finetune_chunk(model: nn.Module, data: TensorData, subsets: list[tuple[int, ...]],
                    spec: TrainingSpec, with_test: bool = True) -> tuple[np.ndarray, np.ndarray]:
    device = data.X.device
    n_copies, n_tasks = len(subsets), data.Y.shape[1]
    sel = torch.zeros(n_copies, n_tasks, dtype=torch.bool, device=device)
    for b, s in enumerate(subsets):
        sel[b, list(s)] = True
    model.train()
    # One copy per subset of the trainable parameters (frozen ones stay the module's own, shared by all copies).
    params = {k: v.detach().unsqueeze(0).repeat(n_copies, *([1] * v.dim()))
              for k, v in model.named_parameters() if v.requires_grad}
    state = {"step": torch.zeros(n_copies, device=device),
             "m": {k: torch.zeros_like(v) for k, v in params.items()},
             "v": {k: torch.zeros_like(v) for k, v in params.items()}}
    rows = [torch.nonzero((data.train & sel[b]).any(dim=1)).squeeze(1) for b in range(n_copies)]
    full_sel = sel
    gens = [torch.Generator(device="cpu").manual_seed(spec.seed) for _ in range(n_copies)]
    base = model

    def copy_loss(p, x, y, mask):
        out = functional_call(base, p, (x,))
        losses, counts = masked_task_means(pointwise_loss(out, y, data.binary), mask)
        present = (counts > 0).to(losses.dtype)
        return (losses * present).sum() / present.sum().clamp_min(1)

    copy_grads = vmap(grad(copy_loss), randomness="different")

    def val_scores(p, sel_now: torch.Tensor, split: torch.Tensor | None = None) -> torch.Tensor:
        split = data.val if split is None else split
        per_task = torch.zeros(sel_now.shape[0], n_tasks, dtype=torch.float64, device=device)
        with torch.no_grad():
            base.eval()
            val_rows = torch.nonzero((split & sel_now.any(0)).any(dim=1)).squeeze(1)
            step = min(4096, getattr(base, "max_batch_rows", 4096))  # a transformer's activations scale with length
            for s0 in range(0, len(val_rows), step):
                r = val_rows[s0:s0 + step]
                out = vmap(lambda q: functional_call(base, q, (data.X[r],)))(p)  # (copies, rows, tasks)
                loss = pointwise_loss(out, data.Y[r].expand_as(out), data.binary) * split[r]
                per_task += loss.sum(1).to(torch.float64)
            base.train()
        per_task /= split.sum(0).clamp_min(1).to(torch.float64)
        return per_task

    def view(flags: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return flags.view((-1,) + (1,) * (like.dim() - 1))

    per_task = val_scores(params, sel)
    best = (per_task * sel).sum(1) / sel.sum(1)
    best_params = {k: v.clone() for k, v in params.items()}
    best_task = per_task.clone()
    # Copies that have stopped leave the stack once they are half of it (their best state is kept in
    # the full-size results): the stragglers of a chunk no longer carry the stopped copies' passes.
    ids = torch.arange(n_copies, device=device)  # stack position -> copy
    final_params = {k: v.clone() for k, v in best_params.items()}
    final_task = best_task.clone()
    since = torch.zeros(n_copies, dtype=torch.long, device=device)
    running = torch.ones(n_copies, dtype=torch.bool, device=device)
    bs = spec.batch_size
    for _epoch in range(1, spec.epochs + 1):
        orders = [rows[b][torch.randperm(len(rows[b]), generator=gens[b]).to(device)] for b in range(len(rows))]
        steps = max(math.ceil(len(o) / bs) for o in orders)
        for k in range(steps):
            idx = torch.zeros(len(orders), bs, dtype=torch.long, device=device)
            valid = torch.zeros(len(orders), bs, dtype=torch.bool, device=device)
            for b, o in enumerate(orders):
                part = o[k * bs:(k + 1) * bs]
                idx[b, :len(part)] = part
                valid[b, :len(part)] = True
            active = running & valid.any(1)
            if not bool(active.any()):
                continue
            mask = data.train[idx] & sel[:, None, :] & valid[:, :, None]
            grads = copy_grads(params, data.X[idx], data.Y[idx], mask)
            _adam_update(params, grads, state, active, spec)
        per_task = val_scores(params, sel)
        score = (per_task * sel).sum(1) / sel.sum(1)
        improved = running & (score < best - 1e-6 * best.abs())
        for k in params:
            best_params[k] = torch.where(view(improved, params[k]), params[k], best_params[k])
        best_task = torch.where(improved[:, None], per_task, best_task)
        best = torch.where(improved, score, best)
        since = torch.where(improved, torch.zeros_like(since), since + 1)
        running = running & (since < spec.patience) & torch.isfinite(score)
        if not bool(running.any()):
            break
        if len(ids) >= 4 and int(running.sum()) <= len(ids) // 2:
            done, keep = ~running, torch.nonzero(running).squeeze(1)
            for k in params:
                final_params[k][ids[done]] = best_params[k][done]
            final_task[ids[done]] = best_task[done]
            ids, sel, best, best_task, since, running = ids[keep], sel[keep], best[keep], best_task[keep], \
                since[keep], running[keep]
            params = {k: v[keep] for k, v in params.items()}
            best_params = {k: v[keep] for k, v in best_params.items()}
            state = {"step": state["step"][keep], "m": {k: v[keep] for k, v in state["m"].items()},
                     "v": {k: v[keep] for k, v in state["v"].items()}}
            kept = keep.tolist()
            rows, gens = [rows[b] for b in kept], [gens[b] for b in kept]
    for k in params:
        final_params[k][ids] = best_params[k]
    final_task[ids] = best_task
    model.eval()
    test = np.full(final_task.shape, np.nan)
    if with_test and bool(data.test.any()):
        test = val_scores(final_params, full_sel, data.test).cpu().numpy()
        test[:, ~data.test.any(0).cpu().numpy()] = np.nan
    return final_task.cpu().numpy(), test


def sequential_finetune(model: nn.Module, data: TensorData, subsets: list[tuple[int, ...]], spec: TrainingSpec) -> np.ndarray:
    """Reference: ``train_model`` on each subset in turn (what the batched version must equal)."""
    base_state = copy.deepcopy(model.state_dict())
    out = np.full((len(subsets), max(len(s) for s in subsets)), np.nan)
    for i, s in enumerate(subsets):
        model.load_state_dict(base_state)
        res = train_model(model, data, spec, tasks=torch.tensor(s, device=data.X.device))
        out[i, :len(s)] = res.task_val_loss[list(s)]
    model.load_state_dict(base_state)
    return out


__all__ = ["finetune_subsets", "sequential_finetune"]
