"""Built-in `planted`: synthetic binary tasks in known groups that compete for a shared encoder.

Construction (all seeded):
- inputs x ~ N(0, I_D), D = ``features``;
- orthonormal directions c (common to all tasks) and e_g (one per group);
  group g's direction is u_g = √shared · c + √(1 − shared) · e_g;
- task t of group g labels its own ``rows_per_task`` rows with y = 1[x·w_t/‖w_t‖ + noise·ε > 0],
  w_t = u_g + spread·ξ_t (ξ_t a random unit vector), ε ~ N(0, 1); every row is labelled for
  exactly one task (sparse labels);
- ``test_rows_per_task`` (default 0) more rows per task, drawn from a stream of their own, are
  marked as test rows (``TaskTable.test_rows``), as in ``synthetic``.

Tasks are named task_00, task_01, ...; task t belongs to group t mod groups (the names do not say
so, and no stage looks at names or order; `synthetic` assigns groups by a seeded permutation).

Why grouping pays: tasks of one group share a direction and each labels few rows, so a group's
model learns its direction from the pooled rows; one model for all tasks has to share its encoder
with groups whose directions differ. With the generic default model, training the planted groups
from scratch beats one model for all and one model per task on held-out rows (the outcome suite,
benchmarks/outcome.py), and the scratch affinity recovers the planted groups
(tests/test_ground_truth.py). Fine-tuning θ* (exact, grad_tag at θ*) does not see them with a roomy
encoder: θ* has already learned every direction (method notes §5, §7).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from affinity.data.table import DataError, TaskTable

DEFAULTS: dict[str, Any] = {
    "tasks": 16,
    "groups": 4,
    "rows_per_task": 200,
    "features": 16,
    "noise": 0.1,
    "spread": 0.1,
    "shared": 0.5,
    "test_rows_per_task": 0,
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
    if not isinstance(p["test_rows_per_task"], int) or isinstance(p["test_rows_per_task"], bool) \
            or p["test_rows_per_task"] < 0:
        raise DataError(f"dataset.params.test_rows_per_task={p['test_rows_per_task']!r} must be a whole number ≥ 0")
    if p["rows_per_task"] < 10:
        raise DataError(f"dataset.params.rows_per_task={p['rows_per_task']} is too small; use at least 10")
    if not isinstance(p["shared"], (int, float)) or not 0 <= p["shared"] < 1:
        raise DataError(f"dataset.params.shared={p['shared']!r} must be in [0, 1)")
    for key in ("noise", "spread"):
        if not isinstance(p[key], (int, float)) or isinstance(p[key], bool) or p[key] < 0:
            raise DataError(f"dataset.params.{key}={p[key]!r} must be a number ≥ 0")
    return p


def make_planted(params: dict[str, Any]) -> TaskTable:
    p = planted_params(params)
    rng = np.random.default_rng(p["seed"])
    n_tasks, n_groups, rows, dim = p["tasks"], p["groups"], p["rows_per_task"], p["features"]
    raw = rng.standard_normal((dim, max(dim, n_groups + 1)))
    if n_groups + 1 <= dim:
        q, _ = np.linalg.qr(raw)
        basis = q[:, :n_groups + 1].T
    else:
        basis = raw[:, :n_groups + 1].T / np.linalg.norm(raw[:, :n_groups + 1].T, axis=1, keepdims=True)
    common, own = basis[0], basis[1:]
    directions = np.sqrt(p["shared"]) * common + np.sqrt(1 - p["shared"]) * own
    group_of = np.arange(n_tasks) % n_groups  # task t in group t mod groups; names do not say which
    X = rng.standard_normal((n_tasks * rows, dim))
    Y = np.full((n_tasks * rows, n_tasks), np.nan)
    weights = []
    for t in range(n_tasks):
        xi = rng.standard_normal(dim)
        w = directions[group_of[t]] + p["spread"] * xi / np.linalg.norm(xi)
        weights.append(w / np.linalg.norm(w))
        sl = slice(t * rows, (t + 1) * rows)
        score = X[sl] @ weights[t] + p["noise"] * rng.standard_normal(rows)
        Y[sl, t] = (score > 0).astype(np.float64)
    test_rows = None
    if p["test_rows_per_task"]:
        # more draws of the same tasks from a stream of their own: the other rows are those without them
        extra = p["test_rows_per_task"]
        test_rng = np.random.default_rng([p["seed"], 0x7E57])
        X_test = test_rng.standard_normal((n_tasks * extra, dim))
        Y_test = np.full((n_tasks * extra, n_tasks), np.nan)
        for t in range(n_tasks):
            sl = slice(t * extra, (t + 1) * extra)
            Y_test[sl, t] = (X_test[sl] @ weights[t] + p["noise"] * test_rng.standard_normal(extra) > 0)
        X, Y = np.concatenate([X, X_test]), np.concatenate([Y, Y_test])
        test_rows = np.arange(len(X)) >= n_tasks * rows
    width = len(str(n_tasks - 1))
    names = [f"task_{t:0{width}d}" for t in range(n_tasks)]
    truth = [[names[t] for t in range(n_tasks) if group_of[t] == g] for g in range(n_groups)]
    return TaskTable(
        X=X, Y=Y, task_names=names, task_types=["binary"] * n_tasks,
        feature_names=[f"x{i}" for i in range(dim)], truth_groups=truth,
        metadata={"source": "planted", "params": p}, test_rows=test_rows,
    )
