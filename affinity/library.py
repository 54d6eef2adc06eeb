"""The engine as a library: your own ``nn.Module`` and tensors in, the affinity and the groups out.

:func:`task_affinity` takes a multitask module with the interface at the top of
affinity/models.py, inputs ``X`` (rows first; any shape your module takes) and labels ``Y``
(rows × tasks, NaN = not labelled), splits the labelled pairs like a manifest job would
(``dataset.val_fraction``, ``dataset.split``, seeded), trains the module on all tasks (θ*, in
place), runs the chosen estimator and clusters the affinity matrix (solver package; k chosen on
the affinity itself). It returns an :class:`AffinityResult`. Settings are the manifest's sections
(``training``, ``estimation``, ``grouping`` as dicts, validated like a manifest's, the same
defaults). Estimators: ``grad_tag``, ``exact``, ``gradient_cosine``, ``tag_lookahead``;
``scratch`` and the candidate checks of ``grouping.selection: outcome`` train fresh models of a
model kind, so they run from manifests (or a plug-in kind), not on a module handed over here.
See docs/library.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from affinity.data.split import split_table
from affinity.data.table import TaskTable, check_labels
from affinity.devices import resolve_device
from affinity.estimators import ESTIMATORS, AffinityEstimate, EstimationContext
from affinity.estimators import grad_tag
from affinity.estimators.tag_lookahead import LookaheadRecorder
from affinity.manifest import DatasetSpec, EstimationSpec, GroupingSpec, ManifestError, TrainingSpec
from affinity.progress import Progress
from affinity.training import TensorData, TrainResult, train_model

LIBRARY_METHODS = ("grad_tag", "exact", "gradient_cosine", "tag_lookahead")


@dataclass
class AffinityResult:
    """What :func:`task_affinity` found: the matrix, the per-subset table and the groups, by task name."""

    task_names: list[str]
    matrix: np.ndarray  # (tasks × tasks): how much training with j lowers i's loss (larger = better together)
    groups: list[list[str]]
    subsets: list[dict[str, Any]]  # per sampled subset: its tasks and each task's estimated validation loss
    estimate: AffinityEstimate
    training: TrainResult
    grouping: Any  # solver.Grouping: labels, objective, k selection facts

    def matrix_frame(self):
        """The affinity matrix as a pandas DataFrame indexed by task name."""
        import pandas as pd

        return pd.DataFrame(self.matrix, index=self.task_names, columns=self.task_names)


def _spec(cls, values: dict[str, Any] | None, section: str):
    from pydantic import ValidationError

    from affinity.manifest import format_validation_error

    try:
        return cls.model_validate(values or {})
    except ValidationError as err:
        text = format_validation_error(err).replace("invalid manifest: ", "")
        raise ManifestError(f"invalid {section}: {text}") from None


def task_affinity(
    model: nn.Module,
    X: torch.Tensor | np.ndarray,
    Y: torch.Tensor | np.ndarray,
    task_names: list[str] | None = None,
    task_types: list[str] | None = None,
    method: str = "grad_tag",
    training: dict[str, Any] | None = None,
    estimation: dict[str, Any] | None = None,
    grouping: dict[str, Any] | None = None,
    val_fraction: float = 0.3,
    split: str = "auto",
    seed: int = 0,
    progress: Progress | None = None,
) -> AffinityResult:
    """Train ``model`` on every task, estimate the task affinity with ``method`` and group the tasks."""
    if method not in LIBRARY_METHODS:
        raise ValueError(f"method {method!r} is not available on a module; use one of {list(LIBRARY_METHODS)} "
                         "(scratch trains fresh models of a manifest's model kind)")
    X_np = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
    Y_np = (Y.detach().cpu().numpy() if isinstance(Y, torch.Tensor) else np.asarray(Y)).astype(np.float64)
    if Y_np.ndim != 2 or len(X_np) != len(Y_np):
        raise ValueError(f"Y must be (rows × tasks) with one row per row of X; got X {X_np.shape}, Y {Y_np.shape}")
    n_tasks = Y_np.shape[1]
    names = list(task_names) if task_names is not None else [f"task_{t}" for t in range(n_tasks)]
    types = list(task_types) if task_types is not None else ["binary"] * n_tasks
    if len(names) != n_tasks or len(types) != n_tasks:
        raise ValueError(f"task_names and task_types need one entry per column of Y ({n_tasks})")
    bad_types = sorted({t for t in types if t not in ("binary", "regression")}, key=str)
    if bad_types:
        raise ValueError(f"task_types {bad_types} are not task types; use 'binary' or 'regression'")
    dups = sorted({n for n in names if names.count(n) > 1}, key=str)
    if dups:
        raise ValueError(f"task_names {dups} are given twice; give every task a distinct name")
    if X_np.dtype.kind in "fc" and not np.isfinite(X_np).all():
        row = int(np.flatnonzero(~np.isfinite(X_np.reshape(len(X_np), -1)).all(axis=1))[0])
        raise ValueError(f"X has NaN or infinite values (first in row {row}); inputs must be finite: impute or drop "
                         "those rows")
    if getattr(model, "n_tasks", n_tasks) != n_tasks:
        raise ValueError(f"model.n_tasks is {model.n_tasks} but Y has {n_tasks} task columns")
    dataset = _spec(DatasetSpec, {"val_fraction": val_fraction, "split": split, "seed": seed}, "dataset settings")
    train_spec = _spec(TrainingSpec, training, "training")
    if (estimation or {}).get("method", method) != method:
        raise ValueError(f"estimation['method'] is {estimation['method']!r} but method is {method!r}; give the "
                         "estimator once, as method=")
    est_spec = _spec(EstimationSpec, {**(estimation or {}), "method": method}, "estimation")
    group_spec = _spec(GroupingSpec, {**(grouping or {}), "selection": "affinity"}, "grouping")
    table = TaskTable(X=np.zeros((len(Y_np), 0)), Y=Y_np, task_names=names, task_types=types, feature_names=[])
    check_labels(table, dataset.min_rows_per_task)
    data = split_table(table, dataset.val_fraction, dataset.seed, False, dataset.split)
    data.X = X_np.astype(np.float32) if X_np.dtype.kind == "f" else X_np  # the module's own inputs (not standardized)
    device = resolve_device(train_spec.device)
    tensors = TensorData.from_split(data, device)
    model = model.to(device)
    progress = progress or Progress()

    from affinity.pipeline import sampled_subsets

    subsets = sampled_subsets(n_tasks, est_spec, names)
    recorder = (LookaheadRecorder(n_tasks, train_spec.lr, est_spec.lookahead_every, tensors.binary)
                if method == "tag_lookahead" else None)
    trained = train_model(model, tensors, train_spec, progress=progress, on_batch=recorder)
    from affinity.manifest import Manifest

    manifest = Manifest.model_construct(dataset=dataset, training=train_spec, estimation=est_spec,
                                        grouping=group_spec)
    ctx = EstimationContext(data, tensors, model, manifest, device, subsets, progress, recorder, None, None, trained)
    estimate = grad_tag.estimate(ctx)[0] if method == "grad_tag" else ESTIMATORS[method](ctx)

    from affinity.pipeline import group_tasks

    found = group_tasks(estimate.matrix, group_spec)
    groups = [[names[t] for t in g] for g in found.groups]
    rows = estimate.table.records(names) if estimate.table is not None else []
    return AffinityResult(names, estimate.matrix, groups, rows, estimate, trained, found)
