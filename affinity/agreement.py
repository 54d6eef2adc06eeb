"""Output agreement: how alike the base model's predictions for two tasks are, over the same inputs.

θ*, trained on all tasks, predicts every task on every row, labelled for that task or not. Two tasks
whose predictions move together across the rows (Pearson correlation of their raw outputs: logits for
binary tasks, values for regression) are read by θ* as labelling the same thing; pooling their rows
is what one model per group would exploit. A source of candidate groupings beside the affinity T
(``grouping.candidates_from``), which the check then scores like any other candidate. Rows: those
labelled for training or validation for some task (never the test rows).

Its reliability is read like T's: the agreement of the two halves of the rows (split-half), and the
stability of the chosen groups when the rows are resampled."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score
from torch import nn

from affinity.training import TensorData

BOOTSTRAPS = 5


@torch.no_grad()
def predictions(model: nn.Module, tensors: TensorData, batch: int = 1024) -> np.ndarray:
    """θ*'s raw outputs (rows × tasks) on the rows labelled for training or validation for some task."""
    batch = min(batch, getattr(model, "max_batch_rows", batch))
    was_training = model.training
    model.eval()
    rows = torch.nonzero((tensors.train | tensors.val).any(dim=1)).squeeze(1)
    outs = [model(tensors.X[rows[s:s + batch]]).to(torch.float64).cpu() for s in range(0, len(rows), batch)]
    model.train(was_training)
    return torch.cat(outs).numpy()


def correlation(O: np.ndarray) -> np.ndarray:
    """Tasks × tasks correlation of the columns of O (diagonal 0; a constant column agrees with none)."""
    O = O - O.mean(0)
    norm = np.sqrt((O ** 2).sum(0))
    ok = norm > 1e-12 * max(1.0, float(norm.max(initial=0.0)))
    Z = np.where(ok, O / np.where(ok, norm, 1.0), 0.0)
    R = Z.T @ Z
    np.fill_diagonal(R, 0.0)
    return np.clip(R, -1.0, 1.0)


def output_agreement(model: nn.Module, tensors: TensorData, batch: int = 1024) -> np.ndarray:
    """Tasks × tasks correlation of θ*'s outputs over the training and validation rows."""
    return correlation(predictions(model, tensors, batch))


def split_half(O: np.ndarray, seed: int = 0) -> dict[str, Any] | None:
    """Pearson correlation over pairs of the agreement from two random halves of the rows, and its
    Spearman–Brown value for all rows (None under 4 rows or 3 tasks)."""
    rows, n = O.shape
    if rows < 4 or n < 3:
        return None
    perm = np.random.default_rng(seed).permutation(rows)
    upper = np.triu_indices(n, 1)
    a, b = correlation(O[perm[0::2]])[upper], correlation(O[perm[1::2]])[upper]
    if a.std() == 0 or b.std() == 0:
        return {"pairs": len(a), "correlation": None, "spearman_brown": None}
    r = float(np.corrcoef(a, b)[0, 1])
    return {"pairs": len(a), "correlation": r, "spearman_brown": float(2 * r / (1 + r)) if r > -1 else None}


def stability(O: np.ndarray, labels: np.ndarray, cluster: Callable[[np.ndarray, int], np.ndarray],
              seed: int = 0) -> dict[str, Any] | None:
    """ARI between ``labels`` and the groups of the agreement of bootstrap resamples of the rows, at the
    same k (``cluster(R, k)`` → labels; None for k = 1 or n)."""
    k, n = int(labels.max()) + 1, len(labels)
    if k in (1, n):
        return None
    rng = np.random.default_rng(seed)
    aris = [float(adjusted_rand_score(labels, cluster(correlation(O[rng.integers(0, len(O), len(O))]), k)))
            for _ in range(BOOTSTRAPS)]
    return {"resamples": BOOTSTRAPS, "mean_ari": float(np.mean(aris)), "min_ari": float(np.min(aris))}


__all__ = ["correlation", "output_agreement", "predictions", "split_half", "stability"]
