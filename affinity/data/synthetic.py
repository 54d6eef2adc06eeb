"""Built-in `synthetic`: the outcome suite's tables, with a planted reason for grouping tasks (or none).

Every task is labelled by a *teacher*, a small random network of one hidden tanh layer that looks
at the inputs through its own ``subspace``-dimensional projection:

    f(x) = v · tanh(A Bᵀx + b),   B: features × subspace (orthonormal columns),
    A: teacher_units × subspace with N(0, 4/subspace) entries (pre-activations of standard
    deviation ≈ 2, so the tanh bends), b ~ N(0, 0.5²), v ~ N(0, 1/teacher_units).

A group's tasks share one teacher: task t of group g uses the weights (A, b, v) of g's teacher
plus ``spread`` times an independent draw of the same distribution (the projection B is the
group's), so spread = 0 makes a group's tasks identical up to label noise and spread ≈ 1 makes
them as different as two teachers on the same directions. Different groups get orthogonal
projections when groups · subspace ≤ features (random ones otherwise), so their teachers share
nothing. Inputs are x ~ N(0, I_features).

Labels. Binary tasks: y = 1[f_t(x) > median of f_t over the task's labelled rows] (so each task's
classes are balanced before noise), then each label flipped with probability ``noise`` (default
0.1). Regression tasks: y = (f_t(x) − μ_t)/σ_t + noise · ε, ε ~ N(0, 1), with μ_t, σ_t the
teacher's mean and standard deviation over 4096 reference inputs (unit-variance targets; default
noise 0.5, so that pooling a group's rows pays for a linear model too).

Mechanisms (``mechanism``):
- ``pooling``: ``tasks`` binary tasks in ``groups`` groups; each task labels its own
  ``rows_per_task`` rows (disjoint, one task per row). Pooling a group's rows multiplies the data
  for one teacher; mixing groups mixes unrelated teachers.
- ``conflict``: as pooling, but the groups come in pairs (``groups`` even) that share a projection
  and whose teachers are opposite: the odd group's teacher is the negative of the even one's
  (v → −v before the task perturbations), so the two groups' labels disagree on the same inputs;
  one model with a shared output for all tasks cannot fit both. A model with a separate output
  head per task can absorb the sign in its heads: for it the two groups of a pair share their
  features, and the pair, not the planted group, is what pools best.
- ``mixed``: ``unrelated`` tasks each with an independent teacher on its own random projection,
  and the other tasks in ``groups`` groups as in pooling. Truth: the groups plus one singleton
  group per unrelated task.
- ``regression``: as pooling with real-valued targets (task type "regression").
- ``shared_rows``: as pooling, but all tasks label the same ``rows_per_task`` rows (dense labels
  on shared inputs, ``rows_per_task`` rows in all instead of tasks · rows_per_task).
- ``unrelated``: every task has an independent teacher on its own random projection; there is no
  planted grouping, so ``truth_groups`` is None (the expected outcome: no grouping beats one
  model per task by more than chance).

``test_rows_per_task`` (default 0) draws that many more rows per task (more rows in all for
shared_rows) from streams of their own and marks them as test rows (``TaskTable.test_rows``): held
out for every task, never trained, stopped or selected on; the other rows are those of the same
parameters without them. A test on 30 rows per task measures a grouping's gain to a pp or two; the
outcome suite scores on hundreds.

Tasks are named ``task_00``, ``task_01``, ... and assigned to groups (and to the unrelated set)
by a seeded random permutation, so neither a name nor a position reveals a group. Features are
``x0``, ``x1``, .... Everything is drawn from ``seed`` (separate streams for the assignment, the
teachers, the inputs and the noise): the same parameters give the same table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from affinity.data.table import DataError, TaskTable

MECHANISMS = ("pooling", "conflict", "mixed", "regression", "shared_rows", "unrelated")

DEFAULTS: dict[str, Any] = {
    "mechanism": "pooling",
    "tasks": 20,
    "groups": 4,
    "rows_per_task": 60,
    "features": 20,
    "subspace": 4,
    "teacher_units": 8,
    "noise": None,  # 0.1 (flip probability) for binary mechanisms, 0.5 (standard deviation) for regression
    "spread": 0.2,
    "unrelated": 8,
    "test_rows_per_task": 0,
    "seed": 0,
}

# Parameters that only some mechanisms use: giving one to another mechanism is refused.
ONLY_FOR = {
    "groups": ("pooling", "conflict", "mixed", "regression", "shared_rows"),
    "spread": ("pooling", "conflict", "mixed", "regression", "shared_rows"),
    "unrelated": ("mixed",),
}

MAX_CELLS = 20_000_000  # rows × tasks of the label matrix
REFERENCE_ROWS = 4096


def _whole(p: dict[str, Any], key: str, low: int) -> None:
    v = p[key]
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
        what = "a positive whole number" if low == 1 else f"a whole number ≥ {low}"
        raise DataError(f"dataset.params.{key}={v!r} must be {what}")
    p[key] = int(v)


def _number(p: dict[str, Any], key: str) -> None:
    v = p[key]
    if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, bool) or not math.isfinite(v):
        raise DataError(f"dataset.params.{key}={v!r} must be a finite number")
    p[key] = float(v)


def synthetic_params(params: dict[str, Any]) -> dict[str, Any]:
    """The mechanism's parameters with defaults filled in, checked; DataError names the bad one and the fix.

    Parameters that the mechanism does not use (see ONLY_FOR) are left out of the result.
    """
    if not isinstance(params, dict):
        raise DataError(f"dataset.params must be a mapping of parameter names to values, not {type(params).__name__}")
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise DataError(
            f"dataset.params {sorted(unknown)} are not parameters of synthetic; accepted: {sorted(DEFAULTS)}"
        )
    mech = params.get("mechanism", DEFAULTS["mechanism"])
    if mech not in MECHANISMS:
        raise DataError(f"dataset.params.mechanism={mech!r} is not a mechanism; use one of {list(MECHANISMS)}")
    for key, mechanisms in ONLY_FOR.items():
        if key in params and mech not in mechanisms:
            raise DataError(
                f"dataset.params.{key} does not apply to mechanism {mech!r} (only to {list(mechanisms)}); remove it"
            )
    p = {**DEFAULTS, **params}
    for key in ("tasks", "groups", "features", "subspace", "teacher_units"):
        _whole(p, key, 1)
    _whole(p, "rows_per_task", 10)
    _whole(p, "unrelated", 0)
    _whole(p, "test_rows_per_task", 0)
    _whole(p, "seed", 0)
    if p["noise"] is None:
        p["noise"] = 0.5 if mech == "regression" else 0.1
    _number(p, "noise")
    _number(p, "spread")
    if p["spread"] < 0:
        raise DataError(f"dataset.params.spread={p['spread']} must be ≥ 0 (0: a group's tasks share one teacher)")
    if mech == "regression":
        if p["noise"] < 0:
            raise DataError(f"dataset.params.noise={p['noise']} must be ≥ 0 (the targets' noise standard deviation)")
    elif not 0 <= p["noise"] < 0.5:
        raise DataError(
            f"dataset.params.noise={p['noise']} must be in [0, 0.5): the probability that a binary label is flipped"
        )
    if p["subspace"] > p["features"]:
        raise DataError(
            f"dataset.params.subspace={p['subspace']} exceeds features={p['features']}; "
            f"a teacher's projection has at most as many directions as there are features"
        )
    if p["tasks"] < 2:
        raise DataError(f"dataset.params.tasks={p['tasks']} must be at least 2; a multitask table needs two tasks")
    grouped = p["tasks"]
    if mech == "mixed":
        if p["unrelated"] >= p["tasks"]:
            raise DataError(
                f"dataset.params.unrelated={p['unrelated']} must be below tasks={p['tasks']}; "
                f"mixed needs related tasks too (use mechanism 'unrelated' for none)"
            )
        grouped = p["tasks"] - p["unrelated"]
    if mech != "unrelated" and 2 * p["groups"] > grouped:
        raise DataError(
            f"dataset.params.groups={p['groups']} leaves a group with fewer than 2 of the {grouped} grouped tasks; "
            f"use at most {grouped // 2} groups or more tasks (mechanism 'unrelated' has no groups)"
        )
    if mech == "conflict" and p["groups"] % 2:
        raise DataError(
            f"dataset.params.groups={p['groups']} must be even for mechanism 'conflict' (groups come in opposing pairs)"
        )
    per_task = p["rows_per_task"] + p["test_rows_per_task"]
    n_rows = per_task if mech == "shared_rows" else p["tasks"] * per_task
    if n_rows * p["tasks"] > MAX_CELLS:
        raise DataError(
            f"dataset.params give {n_rows} rows × {p['tasks']} tasks, more than {MAX_CELLS} label cells; "
            f"lower tasks, rows_per_task or test_rows_per_task"
        )
    return {key: value for key, value in p.items() if mech in ONLY_FOR.get(key, MECHANISMS)}


@dataclass(frozen=True)
class Teacher:
    """f(x) = sign · v · tanh(A Bᵀx + b), centred and scaled by ``offset`` and ``scale``."""

    basis: np.ndarray  # features × subspace
    A: np.ndarray  # units × subspace
    b: np.ndarray  # units
    v: np.ndarray  # units
    offset: float = 0.0
    scale: float = 1.0

    def raw(self, X: np.ndarray) -> np.ndarray:
        return np.tanh(X @ self.basis @ self.A.T + self.b) @ self.v

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return (self.raw(X) - self.offset) / self.scale


def _weights(rng: np.random.Generator, subspace: int, units: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    A = rng.standard_normal((units, subspace)) * (2.0 / math.sqrt(subspace))
    b = rng.standard_normal(units) * 0.5
    v = rng.standard_normal(units) / math.sqrt(units)
    return A, b, v


def _random_basis(rng: np.random.Generator, features: int, k: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((features, k)))
    return q[:, :k]


def _group_bases(rng: np.random.Generator, features: int, k: int, n: int) -> list[np.ndarray]:
    if n * k <= features:
        q = _random_basis(rng, features, n * k)
        return [q[:, i * k:(i + 1) * k] for i in range(n)]
    return [_random_basis(rng, features, k) for _ in range(n)]


def _normalized(teacher: Teacher, reference: np.ndarray) -> Teacher:
    out = teacher.raw(reference)
    scale = float(out.std())
    return Teacher(teacher.basis, teacher.A, teacher.b, teacher.v, float(out.mean()), scale if scale > 1e-12 else 1.0)


@dataclass(frozen=True)
class Plan:
    """What the inputs do not decide: the group of each task (-1: unrelated) and its teacher."""

    params: dict[str, Any]
    group_of: np.ndarray
    teachers: list[Teacher]
    truth_groups: list[list[str]] | None
    task_names: list[str]


def plan(p: dict[str, Any]) -> Plan:
    """Draw the assignment of tasks to groups and every task's teacher (p: checked parameters)."""
    streams = np.random.SeedSequence(p["seed"]).spawn(4)
    assign_rng, teacher_rng = np.random.default_rng(streams[0]), np.random.default_rng(streams[1])
    mech, n_tasks, dim, k, units = p["mechanism"], p["tasks"], p["features"], p["subspace"], p["teacher_units"]
    names = [f"task_{t:0{max(2, len(str(n_tasks - 1)))}d}" for t in range(n_tasks)]
    perm = assign_rng.permutation(n_tasks)
    group_of = np.full(n_tasks, -1)
    if mech == "unrelated":
        grouped = np.array([], dtype=int)
    elif mech == "mixed":
        grouped = perm[p["unrelated"]:]
    else:
        grouped = perm
    n_groups = 0 if mech == "unrelated" else p["groups"]
    if n_groups:
        sizes = [len(grouped) // n_groups + (g < len(grouped) % n_groups) for g in range(n_groups)]
        start = 0
        for g, size in enumerate(sizes):
            group_of[grouped[start:start + size]] = g
            start += size
    reference = teacher_rng.standard_normal((REFERENCE_ROWS, dim))
    if mech == "conflict":
        pair_bases = _group_bases(teacher_rng, dim, k, n_groups // 2)
        bases = [pair_bases[g // 2] for g in range(n_groups)]
        group_weights = []
        for g in range(n_groups):
            if g % 2 == 0:
                group_weights.append(_weights(teacher_rng, k, units))
            else:
                A, b, v = group_weights[g - 1]
                group_weights.append((A, b, -v))
    else:
        bases = _group_bases(teacher_rng, dim, k, n_groups)
        group_weights = [_weights(teacher_rng, k, units) for _ in range(n_groups)]
    teachers = []
    for t in range(n_tasks):
        g = group_of[t]
        if g < 0:
            basis = _random_basis(teacher_rng, dim, k)
            A, b, v = _weights(teacher_rng, k, units)
        else:
            basis = bases[g]
            dA, db, dv = _weights(teacher_rng, k, units)
            A0, b0, v0 = group_weights[g]
            s = p["spread"]
            A, b, v = A0 + s * dA, b0 + s * db, v0 + s * dv
        teachers.append(_normalized(Teacher(basis, A, b, v), reference))
    if mech == "unrelated":
        truth = None
    else:
        truth = [[names[t] for t in range(n_tasks) if group_of[t] == g] for g in range(n_groups)]
        truth += [[names[t]] for t in range(n_tasks) if group_of[t] < 0]
    return Plan(dict(p), group_of, teachers, truth, names)


def labels(teacher: Teacher, X: np.ndarray, regression: bool, noise: float, rng: np.random.Generator,
           threshold: float | None = None) -> np.ndarray:
    """A task's labels of rows X; binary ones thresholded at ``threshold`` (default: their median)."""
    f = teacher(X)
    if regression:
        return f + noise * rng.standard_normal(len(f))
    y = (f > (np.median(f) if threshold is None else threshold)).astype(np.float64)
    flip = rng.random(len(f)) < noise
    return np.where(flip, 1.0 - y, y)


def make_synthetic(params: dict[str, Any]) -> TaskTable:
    p = synthetic_params(params)
    pl = plan(p)
    streams = np.random.SeedSequence(p["seed"]).spawn(6)
    row_rng, noise_rng = np.random.default_rng(streams[2]), np.random.default_rng(streams[3])
    n_tasks, rows, dim = p["tasks"], p["rows_per_task"], p["features"]
    regression = p["mechanism"] == "regression"
    X, Y, thresholds = _draw(pl, p, rows, row_rng, noise_rng, regression)
    test_rows = None
    if p["test_rows_per_task"]:
        # Extra rows from streams of their own (the table's rows stay those of the same seed without them),
        # binary labels cut at the thresholds of the table's rows: more draws of the same tasks.
        X_test, Y_test, _ = _draw(pl, p, p["test_rows_per_task"], np.random.default_rng(streams[4]),
                                  np.random.default_rng(streams[5]), regression, thresholds)
        X, Y = np.concatenate([X, X_test]), np.concatenate([Y, Y_test])
        test_rows = np.arange(len(X)) >= len(X) - len(X_test)
    return TaskTable(
        X=X, Y=Y, task_names=pl.task_names, task_types=["regression" if regression else "binary"] * n_tasks,
        feature_names=[f"x{i}" for i in range(dim)], truth_groups=pl.truth_groups,
        metadata={"source": "synthetic", "params": p}, test_rows=test_rows,
    )


def _draw(pl: Plan, p: dict[str, Any], rows: int, row_rng: np.random.Generator, noise_rng: np.random.Generator,
          regression: bool, thresholds: list[float] | None = None) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """``rows`` rows per task (all tasks on the same rows for shared_rows) and their labels; binary labels cut at
    ``thresholds`` (default: each task's median over these rows, returned)."""
    n_tasks, dim = p["tasks"], p["features"]
    shared = p["mechanism"] == "shared_rows"
    X = row_rng.standard_normal((rows if shared else n_tasks * rows, dim))
    Y = np.full((len(X), n_tasks), np.nan)
    cuts = []
    for t in range(n_tasks):
        sl = slice(None) if shared else slice(t * rows, (t + 1) * rows)
        cut = None if thresholds is None else thresholds[t]
        if cut is None and not regression:
            cut = float(np.median(pl.teachers[t](X[sl])))
        cuts.append(cut)
        Y[sl, t] = labels(pl.teachers[t], X[sl], regression, p["noise"], noise_rng, cut)
    return X, Y, cuts
