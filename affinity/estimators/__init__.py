"""Affinity estimators behind one interface, chosen by name (``estimation.method``).

- ``grad_tag``: projected gradients + linearized fine-tuning on sampled subsets (the product);
- ``exact``: really fine-tuning θ* on every sampled subset (the ground truth of Grad-TAG's approximation);
- ``scratch``: training a fresh model on every sampled subset (what training a group from scratch gives);
- ``tag_lookahead``: Fifty et al.'s lookahead, recorded during base training (pairwise only);
- ``gradient_cosine``: cosine of the tasks' mean gradients at θ* (pairwise only).
"""

from __future__ import annotations

from affinity.estimators import exact, grad_tag, gradient_cosine, scratch, tag_lookahead
from affinity.estimators.base import AffinityEstimate, EstimationContext

ESTIMATORS = {
    "grad_tag": lambda ctx: grad_tag.estimate(ctx)[0],
    "exact": exact.estimate,
    "scratch": scratch.estimate,
    "tag_lookahead": tag_lookahead.estimate,
    "gradient_cosine": gradient_cosine.estimate,
}

# Estimators read from what base training recorded: they cannot be estimated again on other rows.
RECORDED_IN_BASE_TRAINING = frozenset({"tag_lookahead"})


def reestimator(ctx: EstimationContext, method: str | None = None):
    """The job's estimator on other rows of the same data (a TensorData with other training and validation
    masks) → its affinity matrix, for the cross-fitted check (affinity/crossfit.py); None where it cannot."""
    import dataclasses

    method = method or ctx.manifest.estimation.method
    if method in RECORDED_IN_BASE_TRAINING:
        return None
    return lambda tensors: ESTIMATORS[method](dataclasses.replace(ctx, tensors=tensors)).matrix


__all__ = ["ESTIMATORS", "RECORDED_IN_BASE_TRAINING", "AffinityEstimate", "EstimationContext", "reestimator"]
