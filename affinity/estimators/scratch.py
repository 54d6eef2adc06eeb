"""Scratch: train a fresh model on every sampled subset — what a user gets from training a group.

The higher-order affinity of Li, Zhang et al. (KDD 2023, boosting multitask learning on graphs):
each subset's tasks are trained together from the manifest's initialization (same architecture,
seed, loss, optimizer and early stopping as the base model), stacked with ``vmap`` like
``exact``, and every task of the subset is scored on its validation rows. It answers the
question the advice is about (does training i with j, from scratch, lower i's loss?) rather
than what fine-tuning θ* on a subset does. The reference loss of a task is its loss in the
base model (all tasks trained together), so ``self_gain`` is what a subset of ``subset_size``
buys over one model for all.
"""

from __future__ import annotations

import time

import numpy as np

from affinity.affinities import pairwise_affinity
from affinity.estimate import SubsetTable
from affinity.estimators.base import AffinityEstimate, EstimationContext
from affinity.estimators.exact import base_scores
from affinity.finetune import finetune_subsets
from affinity.models import build_model


def fresh_model(ctx: EstimationContext):
    """The manifest's model at its initialization (what a user trains from)."""
    m = ctx.manifest
    return build_model(m.model, ctx.data.X.shape[1], ctx.data.n_tasks, m.training.seed).to(ctx.device)


def estimate(ctx: EstimationContext, subsets: list[tuple[int, ...]] | None = None) -> AffinityEstimate:
    subsets = subsets if subsets is not None else ctx.subsets
    t0 = time.perf_counter()
    spec = ctx.manifest.estimation
    losses = finetune_subsets(fresh_model(ctx), ctx.tensors, subsets, ctx.manifest.training, spec.exact_batch,
                              ctx.progress, ctx.backend, stage="training subsets from scratch")
    base_loss, base_acc = base_scores(ctx)
    matrix, counts, self_gain = pairwise_affinity(subsets, losses, base_loss, ctx.data.n_tasks)
    seconds = time.perf_counter() - t0
    return AffinityEstimate(
        method="scratch", task_names=ctx.data.task_names, matrix=matrix, counts=counts, self_gain=self_gain,
        base_val_loss=base_loss, base_val_acc=base_acc,
        table=SubsetTable(list(subsets), losses, np.full_like(losses, np.nan)), seconds=seconds,
        info={"subset_size": len(subsets[0]), "num_subsets": len(subsets), "training_seconds": seconds,
              "subsets_per_step": spec.exact_batch},
    )
