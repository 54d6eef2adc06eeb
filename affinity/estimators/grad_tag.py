"""Grad-TAG: projected gradients at θ* and linearized fine-tuning on every subset."""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from affinity.affinities import pairwise_affinity
from affinity.data.table import SplitTable
from affinity.devices import solve_dtype
from affinity.estimate import PairData, grad_tag_table, penalty_path
from affinity.estimators.base import AffinityEstimate, EstimationContext
from affinity.gradients import GradientFeatures, labelled_pairs, projected_gradients, select_parameters
from affinity.compute.base import Backend
from affinity.manifest import ComputeSpec, EstimationSpec
from affinity.progress import Progress
from affinity.projection import BlockProjector


def make_projector(model: nn.Module, spec: EstimationSpec, device: torch.device) -> tuple[list[str], BlockProjector]:
    names = select_parameters(model, spec.params, spec.last_layers)
    params = dict(model.named_parameters())
    p = sum(params[n].numel() for n in names)
    return names, BlockProjector(p, spec.projection_dim, spec.projection, spec.seed, spec.block_params, device,
                                 cache_bytes=spec.memory_mb * 2**20 // 2, precision=spec.projection_precision)


def gradient_features(model: nn.Module, data: SplitTable, spec: EstimationSpec, device: torch.device,
                      progress: Progress | None = None, backend: Backend | None = None,
                      compute: ComputeSpec | None = None, work_dir: Path | None = None) -> GradientFeatures:
    """Projected per-sample gradients and base outputs of every labelled pair."""
    compute = compute or ComputeSpec()
    names, projector = make_projector(model, spec, device)
    rows, tasks = labelled_pairs(data.train | data.val)
    X = torch.as_tensor(data.X, device=device)
    memmap = None
    if compute.memmap:
        folder = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="task-affinity-"))
        folder.mkdir(parents=True, exist_ok=True)
        memmap = folder / "features.npy"
    return projected_gradients(model, X, rows, tasks, names, projector, spec.chunk_rows, spec.memory_mb, progress,
                               backend, compute.shard_pairs, memmap)


def estimate_from_features(grads: GradientFeatures, data: SplitTable, spec: EstimationSpec, device: torch.device,
                           subsets: list[tuple[int, ...]], progress: Progress | None = None,
                           backend: Backend | None = None) -> AffinityEstimate:
    """Linearized fine-tuning on every subset and the affinity matrix."""
    t0 = time.perf_counter()
    pairs = PairData.build(grads, np.nan_to_num(data.Y), data.train, data.is_binary, device, solve_dtype(device))
    base_loss, base_acc = pairs.base_scores()
    penalty = penalty_path(spec.l2) if spec.l2_select == "validation" else spec.l2
    table = grad_tag_table(pairs, subsets, penalty, spec.subset_batch, spec.memory_mb, progress, backend)
    fit = spec.pairwise_fit("grad_tag")
    matrix, counts, self_gain = pairwise_affinity(table.subsets, table.val_loss, base_loss, data.n_tasks, fit)
    return AffinityEstimate(
        method="grad_tag", task_names=data.task_names, matrix=matrix, counts=counts, self_gain=self_gain,
        base_val_loss=base_loss, base_val_acc=base_acc, table=table, seconds=time.perf_counter() - t0,
        info={"projection_dim": spec.projection_dim, "projection": spec.projection, "params": spec.params,
              "n_params": grads.n_params, "l2": spec.l2, "l2_select": spec.l2_select, "subset_size": len(subsets[0]),
              "pairwise": fit,
              "num_subsets": len(subsets)},
    )


def linearization_point(ctx: EstimationContext) -> tuple[nn.Module, int | None]:
    """θ* itself, or a copy at the kept base-training state of ``estimation.checkpoint`` (and its epoch)."""
    fraction = ctx.manifest.estimation.checkpoint
    if fraction >= 1.0 or ctx.training is None or not ctx.training.checkpoints:
        return ctx.model, None
    epoch, state = ctx.training.checkpoint(fraction)
    model = copy.deepcopy(ctx.model)
    model.load_state_dict(state)
    model.eval()
    return model, epoch


def estimate(ctx: EstimationContext) -> tuple[AffinityEstimate, GradientFeatures]:
    t0 = time.perf_counter()
    spec = ctx.manifest.estimation
    model, epoch = linearization_point(ctx)
    grads = gradient_features(model, ctx.data, spec, ctx.device, ctx.progress, ctx.backend,
                              ctx.manifest.compute, ctx.work_dir)
    gradient_seconds = time.perf_counter() - t0
    est = estimate_from_features(grads, ctx.data, spec, ctx.device, ctx.subsets, ctx.progress, ctx.backend)
    est.info["gradient_seconds"] = gradient_seconds
    est.info["linearized_at_epoch"] = epoch if epoch is not None else (ctx.training.best_epoch if ctx.training else None)
    est.info["fit_seconds"] = est.seconds
    est.seconds = time.perf_counter() - t0
    return est, grads
