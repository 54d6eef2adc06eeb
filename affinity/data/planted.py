"""Built-in `planted`: synthetic binary tasks in known groups that compete for a shared encoder.

Construction (all seeded):
- inputs x ~ N(0, I_D), D = ``features``;
- group g has a direction u_g (orthonormal when groups ≤ D); task t of group g labels its own
  ``rows_per_task`` rows with y = 1[x·w_t + noise·ε > 0], w_t = u_g + spread·ξ_t (ξ_t a random
  unit vector), ε ~ N(0, 1); every row is labelled for exactly one task (sparse labels).

Why the groups show up in the true affinity: a base model whose shared encoder is narrower than
the number of groups (the built-in manifest uses a bottleneck of ``groups``/2 units) has to
compromise between the groups' directions. Fine-tuning it on a subset turns the encoder towards
the subset's groups, which helps the other tasks of those groups and hurts the rest. Tasks that
merely share a direction with a roomy encoder do not show affinity once the base model has
learned them all (see the method notes); ``tests/`` check the construction against really
fine-tuned affinities.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from affinity.data.table import DataError, TaskTable

DEFAULTS: dict[str, Any] = {
    "tasks": 16,
    "groups": 4,
    "rows_per_task": 120,
    "features": 16,
    "noise": 0.3,
    "spread": 0.3,
    "seed": 0,
}


def planted_params(params: dict[str, Any]) -> dict[str, Any]:
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise DataError(
            f"dataset.params {sorted(unknown)} are not parameters of planted; accepted: {sorted(DEFAULTS)}"
        )
    p = {**DEFAULTS, **params}
    for key in ("tasks", "groups", "rows_per_task", "features"):
        if not isinstance(p[key], int) or isinstance(p[key], bool) or p[key] < 1:
            raise DataError(f"dataset.params.{key}={p[key]!r} must be a positive whole number")
    if p["groups"] > p["tasks"]:
        raise DataError(f"dataset.params.groups={p['groups']} exceeds tasks={p['tasks']}; use at most one group per task")
    if p["rows_per_task"] < 10:
        raise DataError(f"dataset.params.rows_per_task={p['rows_per_task']} is too small; use at least 10")
    for key in ("noise", "spread"):
        if not isinstance(p[key], (int, float)) or isinstance(p[key], bool) or p[key] < 0:
            raise DataError(f"dataset.params.{key}={p[key]!r} must be a number ≥ 0")
    return p


def make_planted(params: dict[str, Any]) -> TaskTable:
    p = planted_params(params)
    rng = np.random.default_rng(p["seed"])
    n_tasks, n_groups, rows, dim = p["tasks"], p["groups"], p["rows_per_task"], p["features"]
    raw = rng.standard_normal((dim, max(dim, n_groups)))
    if n_groups <= dim:
        q, _ = np.linalg.qr(raw)
        directions = q[:, :n_groups].T
    else:
        directions = raw[:, :n_groups].T / np.linalg.norm(raw[:, :n_groups].T, axis=1, keepdims=True)
    group_of = np.arange(n_tasks) % n_groups
    X = rng.standard_normal((n_tasks * rows, dim))
    Y = np.full((n_tasks * rows, n_tasks), np.nan)
    for t in range(n_tasks):
        xi = rng.standard_normal(dim)
        w = directions[group_of[t]] + p["spread"] * xi / np.linalg.norm(xi)
        sl = slice(t * rows, (t + 1) * rows)
        score = X[sl] @ w / np.linalg.norm(w) + p["noise"] * rng.standard_normal(rows)
        Y[sl, t] = (score > 0).astype(np.float64)
    names = [f"g{group_of[t]}_t{t}" for t in range(n_tasks)]
    truth = [[names[t] for t in range(n_tasks) if group_of[t] == g] for g in range(n_groups)]
    return TaskTable(
        X=X, Y=Y, task_names=names, task_types=["binary"] * n_tasks,
        feature_names=[f"x{i}" for i in range(dim)], truth_groups=truth,
        metadata={"source": "planted", "params": p},
    )
