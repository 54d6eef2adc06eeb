"""The job, stage by stage: data → base model → projected gradients → estimates → groups.

Each stage is a function of its inputs (arrays, a model, a manifest section) that returns
arrays, so a stage can run elsewhere (another process or machine) and be tested alone.
``run_job`` chains them and writes the artifacts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from affinity.affinities import pairwise_affinity
from affinity.data import SplitTable, load_dataset
from affinity.devices import resolve_device, solve_dtype
from affinity.estimate import PairData, SubsetTable, grad_tag_table
from affinity.gradients import GradientFeatures, labelled_pairs, projected_gradients, select_parameters
from affinity.manifest import EstimationSpec, GroupingSpec, Manifest
from affinity.models import build_model
from affinity.progress import Progress
from affinity.projection import BlockProjector
from affinity.subsets import check_coverage, pair_counts, sample_subsets
from affinity.training import TensorData, TrainResult, train_model


@dataclass
class AffinityEstimate:
    """What every estimator returns: the per-subset table and the pairwise matrix."""

    method: str
    task_names: list[str]
    matrix: np.ndarray
    counts: np.ndarray
    self_gain: np.ndarray
    base_val_loss: np.ndarray
    base_val_acc: np.ndarray
    table: SubsetTable | None
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


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


def train_base(data: SplitTable, manifest: Manifest, device: torch.device,
               progress: Progress | None = None) -> tuple[nn.Module, TrainResult]:
    """Stage 1: the base model θ* on all tasks."""
    model = build_model(manifest.model, data.X.shape[1], data.n_tasks, manifest.training.seed).to(device)
    result = train_model(model, TensorData.from_split(data, device), manifest.training, progress=progress)
    return model, result


def gradient_features(model: nn.Module, data: SplitTable, spec: EstimationSpec, device: torch.device,
                      progress: Progress | None = None) -> GradientFeatures:
    """Stage 2: projected per-sample gradients and base outputs of every labelled pair."""
    names = select_parameters(model, spec.params, spec.last_layers)
    params = dict(model.named_parameters())
    p = sum(params[n].numel() for n in names)
    projector = BlockProjector(p, spec.projection_dim, spec.projection, spec.seed, spec.block_params, device,
                               cache_bytes=spec.memory_mb * 2**20 // 2)
    rows, tasks = labelled_pairs(data.train | data.val)
    X = torch.as_tensor(data.X, device=device)
    return projected_gradients(model, X, rows, tasks, names, projector, spec.chunk_rows, spec.memory_mb, progress)


def sampled_subsets(n_tasks: int, spec: EstimationSpec, task_names: list[str]) -> list[tuple[int, ...]]:
    """The subsets the estimator is fitted on, with a coverage check."""
    size = min(spec.subset_size, n_tasks)
    subsets = sample_subsets(n_tasks, size, spec.num_subsets, spec.seed, balanced=spec.sampling == "balanced")
    check_coverage(pair_counts(subsets, n_tasks), spec.min_pair_count, task_names, size)
    return subsets


def estimate_grad_tag(grads: GradientFeatures, data: SplitTable, spec: EstimationSpec, device: torch.device,
                      subsets: list[tuple[int, ...]], progress: Progress | None = None) -> AffinityEstimate:
    """Stage 3: linearized fine-tuning on every subset and the affinity matrix."""
    t0 = time.perf_counter()
    pairs = PairData.build(grads, np.nan_to_num(data.Y), data.train, data.is_binary, device, solve_dtype(device))
    base_loss, base_acc = pairs.base_scores()
    table = grad_tag_table(pairs, subsets, spec.l2, spec.subset_batch, spec.memory_mb, progress)
    matrix, counts, self_gain = pairwise_affinity(table.subsets, table.val_loss, base_loss, data.n_tasks)
    return AffinityEstimate(
        method="grad_tag", task_names=data.task_names, matrix=matrix, counts=counts, self_gain=self_gain,
        base_val_loss=base_loss, base_val_acc=base_acc, table=table, seconds=time.perf_counter() - t0,
        info={"projection_dim": spec.projection_dim, "projection": spec.projection, "params": spec.params,
              "n_params": grads.n_params, "l2": spec.l2, "subset_size": len(subsets[0]),
              "num_subsets": len(subsets)},
    )


def group_tasks(matrix: np.ndarray, spec: GroupingSpec) -> Any:
    """Stage 4: cluster the affinity matrix (solver package)."""
    from solver import cluster

    k: Any = spec.k
    check_grouping_k(spec, matrix.shape[0])
    if isinstance(k, list):
        k = (k[0], min(k[1], matrix.shape[0]))
    return cluster(matrix, k, method=spec.method, seed=spec.seed)


def check_grouping_k(spec: GroupingSpec, n_tasks: int) -> None:
    """Refuse a number of groups the dataset cannot have, before any training."""
    k = spec.k
    if isinstance(k, int) and k > n_tasks:
        raise ValueError(f"grouping.k={k} exceeds the number of tasks ({n_tasks}); use at most {n_tasks} or 'auto'")
    if isinstance(k, list) and k[0] > n_tasks:
        raise ValueError(f"grouping.k range {k} starts above the number of tasks ({n_tasks}); lower k_min")


def run_job(manifest: Manifest, out_dir: Path | None = None, progress: Progress | None = None) -> JobResult:
    """Run every stage; write the artifacts to ``out_dir`` when given."""
    progress = progress or Progress()
    device = resolve_device(manifest.training.device)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    progress.start("loading data", 1)
    data = load_dataset(manifest.dataset)
    check_grouping_k(manifest.grouping, data.n_tasks)
    subsets = sampled_subsets(data.n_tasks, manifest.estimation, data.task_names)
    progress.finish()
    seconds["data"] = time.perf_counter() - t
    t = time.perf_counter()
    model, training = train_base(data, manifest, device, progress)
    seconds["base_training"] = time.perf_counter() - t
    t = time.perf_counter()
    grads = gradient_features(model, data, manifest.estimation, device, progress)
    seconds["gradients"] = time.perf_counter() - t
    t = time.perf_counter()
    estimate = estimate_grad_tag(grads, data, manifest.estimation, device, subsets, progress)
    seconds["estimation"] = time.perf_counter() - t
    t = time.perf_counter()
    progress.start("grouping", 1)
    grouping = group_tasks(estimate.matrix, manifest.grouping)
    progress.finish()
    seconds["grouping"] = time.perf_counter() - t
    result = JobResult(manifest, data, model, training, estimate, grouping, seconds, str(device))
    if out_dir is not None:
        from affinity.artifacts import write_artifacts

        progress.start("writing artifacts", 1)
        write_artifacts(Path(out_dir), result, grads)
        progress.finish()
    return result
