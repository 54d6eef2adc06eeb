"""Output agreement: how alike the base model's predictions for two tasks are, over the same inputs.

θ*, trained on all tasks, predicts every task on every row, labelled for that task or not. Two tasks
whose predictions move together across the rows (Pearson correlation of their raw outputs: logits for
binary tasks, values for regression) are read by θ* as labelling the same thing; pooling their rows
is what one model per group would exploit. A source of candidate groupings beside the affinity T
(``grouping.candidates_from``), which the check then scores like any other candidate. Rows: those
labelled for training or validation for some task (never the test rows).

How stable the agreement's groups are is read from θ* retrained from other initializations on the same rows
(``retrained_predictions``, training seeds s + 1 and s + 2): groups that the data carry come back, groups of
one initialization's accidents do not (reliability.agreement_stability). Resampling the rows of one θ*'s
predictions would not say it: two halves of the rows agree closely on unrelated tasks too.

What the agreement's groups buy is checked on rows whose labels did not make them (``grouping.agreement_crossfit``):
θ* fitted every training label, so where two tasks' training labels happen to look alike (noise, on tasks without
structure) their predictions correlate, they are grouped, and the check's folds — training rows too — score the
pair's model on the very labels that paired them. ``fold_predictions`` retrains θ* once per check fold without that
fold's rows (stopped on the rows the check's models stop on); the advice clusters each such θ*'s agreement at every
candidate k and scores fold f with the groups of the θ* that never saw it (affinity/advice.py)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from affinity.training import TensorData, eval_batches

RESEEDS = (1, 2)  # θ* retrained from training.seed + each, for the agreement's stability


MIN_UNFITTED_ROWS = 50  # fewer rows that no task trained on: the agreement reads the validation rows


def agreement_rows(tensors: TensorData, which: str = "fitted") -> torch.Tensor:
    """The rows whose predictions the agreement correlates. fitted: every row labelled for training or validation;
    validation: the rows no task trained on (validation rows only), so that the groups do not carry the noise of
    the training labels θ* fitted, which the check's folds then score (with fewer than MIN_UNFITTED_ROWS such
    rows, every row labelled for validation)."""
    if which == "fitted":
        mask = (tensors.train | tensors.val).any(dim=1)
    else:
        mask = tensors.val.any(dim=1) & ~tensors.train.any(dim=1)
        if int(mask.sum()) < MIN_UNFITTED_ROWS:
            mask = tensors.val.any(dim=1)
    return torch.nonzero(mask).squeeze(1)


def predictions(model: nn.Module, tensors: TensorData, batch: int = 1024, rows: str = "fitted") -> np.ndarray:
    """θ*'s raw outputs (rows × tasks) on the agreement's rows (``agreement_rows``)."""
    rows = agreement_rows(tensors, rows)
    return torch.cat([out.to(torch.float64).cpu() for _, out in eval_batches(model, tensors.X, rows, batch)]).numpy()


def correlation(O: np.ndarray) -> np.ndarray:
    """Tasks × tasks correlation of the columns of O (diagonal 0; a constant column agrees with none)."""
    O = O - O.mean(0)
    norm = np.sqrt((O ** 2).sum(0))
    ok = norm > 1e-12 * max(1.0, float(norm.max(initial=0.0)))
    Z = np.where(ok, O / np.where(ok, norm, 1.0), 0.0)
    R = Z.T @ Z
    np.fill_diagonal(R, 0.0)
    return np.clip(R, -1.0, 1.0)


def output_agreement(model: nn.Module, tensors: TensorData, batch: int = 1024, rows: str = "fitted") -> np.ndarray:
    """Tasks × tasks correlation of θ*'s outputs over the agreement's rows."""
    return correlation(predictions(model, tensors, batch, rows))


def retrained_predictions(data, tensors: TensorData, manifest, progress=None) -> list[np.ndarray]:
    """θ*'s predictions, as ``predictions``, of the base model retrained on the same rows from the training seeds
    ``training.seed + RESEEDS`` (initialization and batch order), one array per seed."""
    from affinity.pipeline import train_base

    out = []
    for i, shift in enumerate(RESEEDS):
        model, _ = train_base(data, manifest, tensors, progress, seed=manifest.training.seed + shift,
                              stage=f"agreement stability: base model {i + 1} of {len(RESEEDS)}")
        out.append(predictions(model, tensors, rows=manifest.grouping.agreement_rows))
    return out


def fold_predictions(data, tensors: TensorData, manifest, progress=None) -> list[np.ndarray]:
    """θ*'s predictions, as ``predictions`` (the same rows), of the base model retrained once per fold of the
    check (``group_check.cv_folds``: the grouping's folds, seed and stopping) on that view's training cells and
    stopped on its stopping cells, so that fold f's labels never reach the f-th model; one array per fold."""
    from affinity.group_check import cv_folds
    from affinity.pipeline import train_base

    spec = manifest.grouping
    views = cv_folds(tensors, spec.folds, spec.seed, spec.check_stop)
    out = []
    for f, view in enumerate(views):
        without = TensorData(tensors.X, tensors.Y, view.train, view.val, tensors.binary)
        model, _ = train_base(data, manifest, without, progress, seed=manifest.training.seed,
                              stage=f"agreement check: base model without fold {f + 1} of {len(views)}")
        out.append(predictions(model, tensors, rows=spec.agreement_rows))
    return out


__all__ = ["RESEEDS", "correlation", "fold_predictions", "output_agreement", "predictions", "retrained_predictions"]
