"""Gradient cosine: cosine similarity of the tasks' mean training-loss gradients at θ*."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from affinity.estimators.base import AffinityEstimate, EstimationContext
from affinity.estimators.exact import base_scores
from affinity.losses import masked_task_means, pointwise_loss


def task_gradients(ctx: EstimationContext) -> torch.Tensor:
    """(tasks, p): gradient of each task's mean training loss at θ*, over all trainable parameters."""
    model, data = ctx.model, ctx.tensors
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}  # frozen ones stay fixed
    n_tasks = data.Y.shape[1]
    rows = torch.nonzero(data.train.any(dim=1)).squeeze(1)

    def weighted(p, w):
        out = functional_call(model, p, (data.X[rows],))
        losses, _ = masked_task_means(pointwise_loss(out, data.Y[rows], data.binary), data.train[rows])
        return (losses * w).sum()

    eye = torch.eye(n_tasks, device=data.X.device)
    grads = []
    for s in range(0, n_tasks, 64):  # bounded: 64 task gradients at a time
        g = vmap(grad(weighted), in_dims=(None, 0))(params, eye[s:s + 64])
        grads.append(torch.cat([g[k].reshape(g[k].shape[0], -1) for k in params], dim=1))
    return torch.cat(grads)


def estimate(ctx: EstimationContext) -> AffinityEstimate:
    t0 = time.perf_counter()
    G = task_gradients(ctx).to(torch.float64)
    Gn = G / G.norm(dim=1, keepdim=True).clamp_min(1e-30)
    matrix = (Gn @ Gn.T).cpu().numpy()
    np.fill_diagonal(matrix, 0.0)
    n = matrix.shape[0]
    base_loss, base_acc = base_scores(ctx)
    return AffinityEstimate(
        method="gradient_cosine", task_names=ctx.data.task_names, matrix=matrix,
        counts=np.ones((n, n), dtype=np.int64), self_gain=np.zeros(n), base_val_loss=base_loss,
        base_val_acc=base_acc, table=None, seconds=time.perf_counter() - t0,
        info={"metric": "cosine of mean training-loss gradients at the base model"},
    )
