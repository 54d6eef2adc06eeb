"""Training a multitask model: per-task masked losses averaged over tasks, Adam, early stopping.

The same loop trains the base model on all tasks and fine-tunes it on a task subset (the exact
estimator): ``tasks`` selects which tasks' losses enter the objective and the stopping rule.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from affinity.data.table import SplitTable
from affinity.devices import resolve_device
from affinity.losses import pointwise_loss
from affinity.manifest import TrainingSpec
from affinity.optim import MTLMethod, TaskBatch, make_method
from affinity.progress import Progress


@dataclass
class TensorData:
    """A SplitTable as tensors on one device (labels NaN → 0, masks as bool)."""

    X: torch.Tensor
    Y: torch.Tensor
    train: torch.Tensor
    val: torch.Tensor
    binary: torch.Tensor
    test: torch.Tensor | None = None  # held-out test pairs (rows × tasks); scored only, never trained on

    def __post_init__(self) -> None:
        if self.test is None:
            self.test = torch.zeros_like(self.train)

    def to(self, device: torch.device | str) -> "TensorData":
        return TensorData(self.X.to(device), self.Y.to(device), self.train.to(device), self.val.to(device),
                          self.binary.to(device), self.test.to(device))

    @classmethod
    def from_split(cls, data: SplitTable, device: torch.device) -> "TensorData":
        return cls(
            X=torch.as_tensor(data.X, device=device),
            Y=torch.as_tensor(np.nan_to_num(data.Y, nan=0.0), device=device),
            train=torch.as_tensor(data.train, device=device),
            val=torch.as_tensor(data.val, device=device),
            binary=torch.as_tensor(data.is_binary, device=device),
            test=torch.as_tensor(data.test, device=device),
        )


@dataclass
class TrainResult:
    state: dict[str, torch.Tensor]
    best_epoch: int
    epochs_run: int
    best_val_loss: float
    task_val_loss: np.ndarray
    history: list[dict[str, float]] = field(default_factory=list)
    priority: dict[str, Any] | None = None  # connection_strength: the learned task priority (by task index)
    checkpoints: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # epoch -> state (CPU)

    def checkpoint(self, fraction: float) -> tuple[int, dict[str, torch.Tensor]]:
        """The kept state nearest to ``fraction`` of the best epoch (the best state for fraction 1)."""
        if fraction >= 1.0 or not self.checkpoints:
            return self.best_epoch, self.state
        target = fraction * self.best_epoch
        epoch = min((e for e in self.checkpoints if e <= max(self.best_epoch, 1)), key=lambda e: abs(e - target),
                    default=None)
        if epoch is None:
            return self.best_epoch, self.state
        return epoch, self.checkpoints[epoch]


def checkpoint_epochs(epochs: int) -> set[int]:
    """Epochs whose state base training keeps: 1, 2, 3, 4, 6, 8, 11, 16, ... (about 15 per 200 epochs)."""
    out, e = set(), 1.0
    while e <= epochs:
        out.add(int(round(e)))
        e = max(e * 1.4, e + 1)
    return out


@torch.no_grad()
def eval_batches(model: nn.Module, X: torch.Tensor, rows: torch.Tensor, batch: int):
    """(row indices, raw outputs) of ``model`` in eval mode over ``rows`` of ``X``, in batches of ``batch``
    or of the model's ``max_batch_rows`` when it has one; the model's mode is restored afterwards."""
    batch = min(batch, getattr(model, "max_batch_rows", batch))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), batch):
            r = rows[start:start + batch]
            yield r, model(X[r])
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_losses(model: nn.Module, data: TensorData, mask: torch.Tensor, batch: int = 8192) -> torch.Tensor:
    """Per-task mean loss over the rows of ``mask`` (rows × tasks), model in eval mode (``eval_batches``)."""
    sums = torch.zeros(mask.shape[1], dtype=torch.float64, device=data.X.device)
    counts = mask.sum(dim=0).to(torch.float64)
    rows = torch.nonzero(mask.any(dim=1)).squeeze(1)
    for r, out in eval_batches(model, data.X, rows, batch):
        loss = pointwise_loss(out, data.Y[r], data.binary)
        sums += (loss * mask[r]).sum(dim=0).to(torch.float64)
    return sums / counts.clamp_min(1)


def train_model(
    model: nn.Module,
    data: TensorData,
    spec: TrainingSpec,
    tasks: torch.Tensor | None = None,
    method: MTLMethod | None = None,
    progress: Progress | None = None,
    stage: str = "base training",
    on_batch: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
    keep_checkpoints: bool = False,
) -> TrainResult:
    """Train ``model`` in place on ``tasks`` (all by default) and load the best-validation state.

    Loss of a batch: for each selected task with training rows in the batch, the mean loss over
    those rows; the multitask method (``spec.mtl_method`` unless ``method`` is given) combines them
    (equal weighting: their mean) and updates the model. A method with a ``priority(model, tasks)``
    (connection strength) reports the learned task priority of the best state in ``priority``. Early stopping
    on the mean over selected tasks of the validation loss, with ``spec.patience``. ``on_batch``
    sees (model, x, y, training mask) before each update (e.g. to record TAG lookaheads).
    ``keep_checkpoints`` keeps the state (on the CPU) after the epochs of ``checkpoint_epochs``.
    """
    device = data.X.device
    n_tasks = data.Y.shape[1]
    sel = torch.zeros(n_tasks, dtype=torch.bool, device=device)
    sel[tasks if tasks is not None else slice(None)] = True
    train_mask = data.train & sel
    val_mask = data.val & sel
    rows = torch.nonzero(train_mask.any(dim=1)).squeeze(1)
    method = method or make_method(spec.mtl_method, spec)
    selected = torch.nonzero(sel).squeeze(1)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    gen = torch.Generator(device="cpu").manual_seed(spec.seed)
    progress = progress or Progress()
    progress.start(stage, spec.epochs)

    def val_score() -> tuple[float, torch.Tensor]:
        per_task = evaluate_losses(model, data, val_mask)
        return float(per_task[sel].mean()), per_task

    best, per_task = val_score()
    best_state = copy.deepcopy(model.state_dict())
    best_epoch, since_best, history = 0, 0, []
    keep = checkpoint_epochs(spec.epochs) if keep_checkpoints else set()
    checkpoints: dict[int, dict[str, torch.Tensor]] = {}
    epoch = 0
    for epoch in range(1, spec.epochs + 1):
        model.train()
        order = rows[torch.randperm(len(rows), generator=gen).to(device)]
        for start in range(0, len(order), spec.batch_size):
            r = order[start:start + spec.batch_size]
            if on_batch is not None:
                on_batch(model, data.X[r], data.Y[r], train_mask[r])
            mask = train_mask[r]
            present = torch.nonzero(mask.any(dim=0)).squeeze(1)
            batch = TaskBatch(model, data.X[r], data.Y[r], mask, data.binary, present, selected)
            method.step(batch, optimizer, epoch, spec.epochs)
        score, task_scores = val_score()
        history.append({"epoch": epoch, "val_loss": score})
        if epoch in keep:
            checkpoints[epoch] = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if score < best - 1e-6 * abs(best):
            best, per_task, best_epoch, since_best = score, task_scores, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
        progress.advance()
        progress.check_cancelled()
        if since_best >= spec.patience or not math.isfinite(score):
            break
    progress.finish()
    model.load_state_dict(best_state)
    model.eval()
    report = getattr(method, "priority", None)
    return TrainResult(
        state=best_state, best_epoch=best_epoch, epochs_run=epoch, best_val_loss=best,
        task_val_loss=per_task.cpu().numpy(), history=history,
        priority=report(model, selected) if callable(report) else None, checkpoints=checkpoints,
    )


def training_device(spec: TrainingSpec) -> torch.device:
    return resolve_device(spec.device)
