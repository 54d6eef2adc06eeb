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

from affinity.estimators.base import AffinityEstimate, EstimationContext
from affinity.estimators.exact import trained_subsets_estimate
from affinity.kinds import make_model


def fresh_model(ctx: EstimationContext):
    """The manifest's model at its initialization (what a user trains from)."""
    m = ctx.manifest
    return make_model(m.model, ctx.data, m.training.seed).to(ctx.device)


def estimate(ctx: EstimationContext, subsets: list[tuple[int, ...]] | None = None) -> AffinityEstimate:
    return trained_subsets_estimate(ctx, fresh_model(ctx), "scratch", "training subsets from scratch", subsets)
