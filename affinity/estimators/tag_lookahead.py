"""TAG lookahead (Fifty et al., NeurIPS 2021), recorded during base training.

At every ``lookahead_every``-th training step, for each task j: θ'_j = θ − lr · ∇L_j(θ) on the
batch; the affinity of j on i is 1 − L_i(θ'_j) / L_i(θ) on the same batch. The matrix is the mean
over the recorded steps (pairs present in the batch), symmetrized, with a zero diagonal.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from affinity.estimators.base import AffinityEstimate, EstimationContext
from affinity.estimators.exact import base_scores
from affinity.losses import masked_task_means, pointwise_loss


class LookaheadRecorder:
    """A ``train_model`` batch hook accumulating the lookahead affinities."""

    def __init__(self, n_tasks: int, lr: float, every: int, binary: torch.Tensor, chunk: int = 64) -> None:
        self.lr, self.every, self.binary, self.chunk = lr, every, binary, chunk
        self.sums = np.zeros((n_tasks, n_tasks))
        self.counts = np.zeros((n_tasks, n_tasks), dtype=np.int64)
        self.steps = 0
        self.seconds = 0.0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> None:
        self.steps += 1
        if (self.steps - 1) % self.every:
            return
        t0 = time.perf_counter()
        params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}  # frozen ones stay fixed
        buffers = {k: v.clone() for k, v in model.named_buffers()}  # a measurement: the model's statistics stay

        def task_losses(p):
            out = functional_call(model, {**p, **buffers}, (x,))
            losses, counts = masked_task_means(pointwise_loss(out, y, self.binary), mask)
            return losses

        with torch.no_grad():
            base = task_losses(params)
        present = (mask.sum(0) > 0)
        idx = torch.nonzero(present).squeeze(1)
        n = base.shape[0]
        eye = torch.eye(n, device=x.device)
        for s in range(0, len(idx), self.chunk):
            js = idx[s:s + self.chunk]
            g = vmap(grad(lambda p, w: (task_losses(p) * w).sum()), in_dims=(None, 0))(params, eye[js])
            ahead = {k: params[k].unsqueeze(0) - self.lr * g[k] for k in params}
            with torch.no_grad():
                after = vmap(task_losses)(ahead)  # (len(js), tasks)
            ratio = 1.0 - after / base.clamp_min(1e-12)  # [j, i]: affinity of j on i
            sub = ratio[:, idx].T.cpu().numpy()  # [i, j]
            jj = js.cpu().numpy()
            ii = idx.cpu().numpy()
            self.sums[np.ix_(ii, jj)] += sub
            self.counts[np.ix_(ii, jj)] += 1
        self.seconds += time.perf_counter() - t0

    def matrix(self) -> np.ndarray:
        A = np.divide(self.sums, self.counts, out=np.zeros_like(self.sums), where=self.counts > 0)
        T = (A + A.T) / 2
        np.fill_diagonal(T, 0.0)
        return T


def estimate(ctx: EstimationContext) -> AffinityEstimate:
    if ctx.lookahead is None:
        raise ValueError("estimation.method='tag_lookahead' needs the lookahead recorded during base training")
    rec: LookaheadRecorder = ctx.lookahead
    base_loss, base_acc = base_scores(ctx)
    n = ctx.data.n_tasks
    return AffinityEstimate(
        method="tag_lookahead", task_names=ctx.data.task_names, matrix=rec.matrix(), counts=rec.counts,
        self_gain=np.zeros(n), base_val_loss=base_loss, base_val_acc=base_acc, table=None, seconds=rec.seconds,
        info={"recorded_steps": int((rec.steps + rec.every - 1) // rec.every), "every": rec.every, "lr": rec.lr},
    )
