"""A plug-in's own data kinds (`rings`: points in the plane made from dataset.params, tasks on their radius or their
side; `centered`: a CSV or Parquet table whose feature columns are centered and scaled) and model kind (`probe`: one
tanh layer and a linear head per task), registered by entry points."""

import numpy as np
import torch
from torch import nn

from affinity.data.table import DataError, TaskTable
from affinity.kinds import DataKind, ModelKind


def read_rings(spec):
    p = {"tasks": 6, "rows_per_task": 40, "seed": 0, **spec.params}
    if not isinstance(p["tasks"], int) or p["tasks"] < 2:
        raise DataError(f"dataset.params.tasks={p['tasks']!r} must be a whole number of at least 2")
    rng = np.random.default_rng(p["seed"])
    rows, tasks = p["rows_per_task"], p["tasks"]
    X = rng.standard_normal((tasks * rows, 2))
    Y = np.full((tasks * rows, tasks), np.nan)
    for t in range(tasks):
        part = X[t * rows:(t + 1) * rows]
        label = np.linalg.norm(part, axis=1) > 1.1 if t % 2 == 0 else part[:, 0] > 0.0
        Y[t * rows:(t + 1) * rows, t] = label.astype(float)
    return TaskTable(X=X, Y=Y, task_names=[f"ring_{t}" for t in range(tasks)], task_types=["binary"] * tasks,
                     feature_names=["x", "y"], truth_groups=[[f"ring_{t}" for t in range(s, tasks, 2)] for s in (0, 1)])


def read_centered(spec):
    from dataclasses import replace

    from affinity.data import read_table

    table = read_table(spec)
    X = table.X - table.X.mean(0)
    return replace(table, X=X / np.where(X.std(0) > 0, X.std(0), 1.0))


class Probe(nn.Module):
    def __init__(self, n_features: int, n_tasks: int, width: int) -> None:
        super().__init__()
        self.n_tasks = n_tasks
        self.body = nn.Sequential(nn.Linear(n_features, width), nn.Tanh())
        self.heads = nn.Linear(width, n_tasks)

    def forward(self, x):
        return self.heads(self.body(x))


def build_probe(spec, data, seed):
    torch.manual_seed(seed)
    return Probe(data.X.shape[1], data.n_tasks, int(spec.params.get("width", 8)))


RINGS = DataKind("rings", read_rings, sources=())  # no file: made from dataset.params
CENTERED = DataKind("centered", read_centered, columns=(("features", True),))  # a CSV or Parquet table
PROBE = ModelKind("probe", ("rings", "table", "centered"), build_probe)
