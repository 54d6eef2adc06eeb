"""Exact: really fine-tune θ* on every subset (same loss, optimizer, stopping rule) — the ground truth."""

from __future__ import annotations

import time

import numpy as np

from affinity.affinities import pairwise_affinity
from affinity.estimate import SubsetTable
from affinity.estimators.base import AffinityEstimate, EstimationContext
from affinity.finetune import finetune_subsets
from affinity.training import evaluate_losses


def base_scores(ctx: EstimationContext) -> tuple[np.ndarray, np.ndarray]:
    loss = evaluate_losses(ctx.model, ctx.tensors, ctx.tensors.val).cpu().numpy()
    return loss, np.full(len(loss), np.nan)


def trained_subsets_estimate(ctx: EstimationContext, model, method: str, stage: str,
                             subsets: list[tuple[int, ...]] | None = None) -> AffinityEstimate:
    """The affinity of subsets really trained from ``model`` (θ* for exact, a fresh model for scratch)."""
    subsets = subsets if subsets is not None else ctx.subsets
    t0 = time.perf_counter()
    spec = ctx.manifest.estimation
    losses = finetune_subsets(model, ctx.tensors, subsets, ctx.manifest.training, spec.exact_batch, ctx.progress,
                              ctx.backend, stage=stage)
    base_loss, base_acc = base_scores(ctx)
    fit = spec.pairwise_fit(method)
    matrix, counts, self_gain = pairwise_affinity(subsets, losses, base_loss, ctx.data.n_tasks, fit)
    seconds = time.perf_counter() - t0
    return AffinityEstimate(
        method=method, task_names=ctx.data.task_names, matrix=matrix, counts=counts, self_gain=self_gain,
        base_val_loss=base_loss, base_val_acc=base_acc,
        table=SubsetTable(list(subsets), losses, np.full_like(losses, np.nan)), seconds=seconds,
        info={"subset_size": len(subsets[0]), "num_subsets": len(subsets), "training_seconds": seconds,
              "subsets_per_step": spec.exact_batch, "pairwise": fit},
    )


def estimate(ctx: EstimationContext, subsets: list[tuple[int, ...]] | None = None) -> AffinityEstimate:
    est = trained_subsets_estimate(ctx, ctx.model, "exact", "exact fine-tuning", subsets)
    est.info["fine_tuning_seconds"] = est.info.pop("training_seconds")
    return est
