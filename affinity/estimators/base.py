"""What every affinity estimator takes and returns, so that any downstream step takes any of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from affinity.compute.base import Backend
from affinity.data.table import SplitTable
from affinity.estimate import SubsetTable
from affinity.manifest import Manifest
from affinity.progress import Progress
from affinity.training import TensorData


@dataclass
class AffinityEstimate:
    """The per-subset table (None for pairwise-only estimators) and the pairwise matrix."""

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
class EstimationContext:
    """Inputs of an estimator: the data, θ* (trained), the manifest, the subsets to score."""

    data: SplitTable
    tensors: TensorData
    model: nn.Module
    manifest: Manifest
    device: torch.device
    subsets: list[tuple[int, ...]]
    progress: Progress
    lookahead: np.ndarray | None = None  # TAG lookahead affinities recorded during base training
    backend: Backend | None = None  # where shards run (default: this process)
    work_dir: Path | None = None  # where memory-mapped features go (compute.memmap)
    training: Any = None  # the base model's TrainResult (kept checkpoints for estimation.checkpoint)
