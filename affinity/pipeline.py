"""The job, stage by stage: data → base model → affinity estimate → groups → artifacts.

Each stage is a function of its inputs (arrays, a model, a manifest section) that returns
arrays, so a stage can run elsewhere (another process or machine) and be tested alone.
``run_job`` chains them and writes the artifacts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from affinity.compute import Backend, make_backend
from affinity.data import SplitTable
from affinity.devices import resolve_device
from affinity.estimators import ESTIMATORS, AffinityEstimate, EstimationContext
from affinity.estimators import grad_tag
from affinity.estimators.tag_lookahead import LookaheadRecorder
from affinity.gradients import GradientFeatures
from affinity.manifest import EstimationSpec, GroupingSpec, Manifest
from affinity.kinds import load_data, make_model
from affinity.optim.priority import priority_record
from affinity.progress import Progress
from affinity.subsets import check_coverage, pair_counts, sample_subsets
from affinity.training import TensorData, TrainResult, train_model


@dataclass
class JobResult:
    manifest: Manifest
    data: SplitTable
    model: nn.Module
    training: TrainResult
    estimate: AffinityEstimate
    grouping: Any
    seconds: dict[str, float]
    device: str
    gradients: GradientFeatures | None = None
    backend: str = "local"
    advice: dict[str, Any] | None = None

    @property
    def priority(self) -> dict[str, Any] | None:
        """connection_strength: the base model's learned task priority, with task names."""
        if self.training.priority is None:
            return None
        return priority_record(self.training.priority, self.data.task_names)


def train_base(data: SplitTable, manifest: Manifest, tensors: TensorData, progress: Progress | None = None,
               on_batch=None, seed: int | None = None, stage: str = "base training") -> tuple[nn.Module, TrainResult]:
    """Stage 1: the base model θ* on all tasks. ``seed``: another training seed (initialization and batch order)
    than ``training.seed`` — θ* retrained for the output agreement's stability, without Grad-TAG's checkpoints."""
    spec = manifest.training if seed is None else manifest.training.model_copy(update={"seed": seed})
    model = make_model(manifest.model, data, spec.seed).to(tensors.X.device)
    keep = seed is None and manifest.estimation.method == "grad_tag" and manifest.estimation.checkpoint < 1.0
    return model, train_model(model, tensors, spec, progress=progress, stage=stage, on_batch=on_batch,
                              keep_checkpoints=keep)


def sampled_subsets(n_tasks: int, spec: EstimationSpec, task_names: list[str]) -> list[tuple[int, ...]]:
    """The subsets the estimator is fitted on, with a coverage check."""
    size = min(spec.subset_size, n_tasks)
    subsets = sample_subsets(n_tasks, size, spec.num_subsets, spec.seed, balanced=spec.sampling == "balanced")
    check_coverage(pair_counts(subsets, n_tasks), spec.min_pair_count, task_names, size)
    return subsets


def check_grouping_k(spec: GroupingSpec, n_tasks: int) -> None:
    """Refuse a number of groups the dataset cannot have, before any training."""
    k = spec.k
    if isinstance(k, int) and k > n_tasks:
        raise ValueError(f"grouping.k={k} exceeds the number of tasks ({n_tasks}); use at most {n_tasks} or 'auto'")
    if isinstance(k, list) and k[0] > n_tasks:
        raise ValueError(f"grouping.k range {k} starts above the number of tasks ({n_tasks}); lower k_min")


def group_tasks(matrix, spec: GroupingSpec) -> Any:
    """Stage 3: cluster the affinity matrix (solver package)."""
    from solver import cluster

    k: Any = spec.k
    check_grouping_k(spec, matrix.shape[0])
    if isinstance(k, list):
        k = (k[0], min(k[1], matrix.shape[0]))
    return cluster(matrix, k, method=spec.method, seed=spec.seed)


@dataclass
class Prepared:
    """Data, θ* and the subsets: what every estimator starts from."""

    data: SplitTable
    tensors: TensorData
    model: nn.Module
    training: TrainResult
    subsets: list[tuple[int, ...]]
    device: torch.device
    lookahead: LookaheadRecorder | None
    seconds: dict[str, float]
    backend: Backend | None = None


def prepare(manifest: Manifest, progress: Progress, record_lookahead: bool = False) -> Prepared:
    """Load and check the data, sample the subsets, train θ* (recording lookaheads if asked)."""
    device = resolve_device(manifest.training.device)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    progress.start("loading data", 1)
    data = load_data(manifest)
    check_grouping_k(manifest.grouping, data.n_tasks)
    subsets = sampled_subsets(data.n_tasks, manifest.estimation, data.task_names)
    tensors = TensorData.from_split(data, device)
    progress.finish()
    seconds["data"] = time.perf_counter() - t
    recorder = None
    if record_lookahead or manifest.estimation.method == "tag_lookahead":
        recorder = LookaheadRecorder(data.n_tasks, manifest.training.lr, manifest.estimation.lookahead_every,
                                     tensors.binary)
    t = time.perf_counter()
    model, training = train_base(data, manifest, tensors, progress, on_batch=recorder)
    seconds["base_training"] = time.perf_counter() - t
    return Prepared(data, tensors, model, training, subsets, device, recorder, seconds,
                    make_backend(manifest.compute))


def recommend(prep: Prepared, manifest: Manifest, estimate: AffinityEstimate,
              progress: Progress) -> tuple[Any, dict[str, Any]]:
    """Stage 3: candidate groupings of the affinity, each checked as the user would train it (affinity.advice)."""
    from affinity.advice import advise
    from affinity.estimators import reestimator

    return advise(estimate.matrix, estimate, prep.data, prep.tensors, manifest, prep.training.task_val_loss,
                  progress, prep.backend, reestimator(context(prep, manifest, progress)), agreement_of(prep, manifest),
                  retrained_of(prep, manifest, progress), fold_predictions_of(prep, manifest, progress))


def agreement_of(prep: Prepared, manifest: Manifest):
    """θ*'s predictions (rows × tasks) where the grouping's candidates come from their agreement (else None)."""
    from affinity.advice import candidate_sources
    from affinity.agreement import predictions

    if "outputs" not in candidate_sources(manifest.grouping):
        return None
    return predictions(prep.model, prep.tensors, rows=manifest.grouping.agreement_rows)


def retrained_of(prep: Prepared, manifest: Manifest, progress: Progress):
    """θ* retrained from other seeds: a call that trains them once however often it is asked (one advice per
    estimator in affinity.outcome) and returns their predictions (``agreement.retrained_predictions``), made by the
    advice when it chooses the agreement's groups (their stability) or reads the agreement of several base models
    (``grouping.agreement_consensus``)."""
    from affinity.agreement import retrained_predictions

    return cache(partial(retrained_predictions, prep.data, prep.tensors, manifest, progress))


def fold_predictions_of(prep: Prepared, manifest: Manifest, progress: Progress):
    """θ* retrained without each check fold (``grouping.agreement_crossfit``): a call that trains them once however
    often it is asked and returns their predictions (``agreement.fold_predictions``); None when the setting is off."""
    from affinity.agreement import fold_predictions

    if manifest.grouping.agreement_crossfit == "off":
        return None
    return cache(partial(fold_predictions, prep.data, prep.tensors, manifest, progress))


def context(prep: Prepared, manifest: Manifest, progress: Progress, work_dir: Path | None = None) -> EstimationContext:
    return EstimationContext(prep.data, prep.tensors, prep.model, manifest, prep.device, prep.subsets, progress,
                             prep.lookahead, prep.backend, work_dir, prep.training)


def run_job(manifest: Manifest, out_dir: Path | None = None, progress: Progress | None = None) -> JobResult:
    """Run every stage; write the artifacts to ``out_dir`` when given."""
    progress = progress or Progress()
    prep = prepare(manifest, progress)
    seconds = dict(prep.seconds)
    ctx = context(prep, manifest, progress, Path(out_dir) if out_dir is not None else None)
    t = time.perf_counter()
    grads = None
    if manifest.estimation.method == "grad_tag":
        estimate, grads = grad_tag.estimate(ctx)
    else:
        estimate = ESTIMATORS[manifest.estimation.method](ctx)
    seconds["estimation"] = time.perf_counter() - t
    t = time.perf_counter()
    grouping, advice = recommend(prep, manifest, estimate, progress)
    seconds["grouping"] = time.perf_counter() - t
    result = JobResult(manifest, prep.data, prep.model, prep.training, estimate, grouping, seconds,
                       str(prep.device), grads, backend=prep.backend.name if prep.backend else "local",
                       advice=advice)
    if out_dir is not None:
        from affinity.artifacts import write_artifacts

        progress.start("writing artifacts", 1)
        write_artifacts(Path(out_dir), result)
        progress.finish()
    return result
