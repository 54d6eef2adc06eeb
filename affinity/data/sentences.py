"""Built-in `text`: short template sentences whose attributes are the labels, tasks in known groups.

Construction (all seeded): every sentence is "{count} {color} {thing}s, {mood}, {place} at {time}"
(about 12 tokens) with each slot drawn uniformly from two classes of words (warm or
cool colors, animals or machines, glad or gloomy moods, indoor or outdoor places, morning or
evening, few or many). A task's label is one attribute's class, flipped with probability
``noise``; each task labels its own ``rows_per_task`` sentences (sparse labels, like `planted`).

Tasks: ``per_group`` tasks on each of the ``groups`` first attributes (color, thing, mood, place,
in this order) — the tasks of one group ask the same question of different sentences — and one
task on each of the ``unrelated`` next attributes (time, count), each alone. ``truth`` is the
groups, the unrelated tasks as singletons. Task names say nothing about the group
(``task_00`` ...; task t of the grouped ones belongs to group t mod groups).

``test_rows_per_task`` (default 0) more sentences per task, drawn from a stream of their own, are marked
as test rows (``TaskTable.test_rows``), as in ``planted``: the other rows are those drawn without them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from affinity.data.table import DataError, TaskTable

WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "color": (("red", "orange", "yellow", "golden", "crimson"), ("blue", "green", "purple", "teal", "gray")),
    "thing": (("dog", "cat", "horse", "rabbit", "parrot"), ("car", "truck", "robot", "tractor", "drone")),
    "mood": (("happy", "cheerful", "glad", "calm", "proud"), ("sad", "angry", "gloomy", "nervous", "upset")),
    "place": (("kitchen", "library", "office", "cellar", "hallway"), ("park", "beach", "forest", "meadow", "harbor")),
    "time": (("morning", "dawn", "sunrise", "forenoon", "daybreak"), ("evening", "night", "dusk", "midnight", "sunset")),
    "count": (("two", "three", "four", "five", "six"), ("forty", "fifty", "sixty", "ninety", "hundred")),
}
ATTRIBUTES = tuple(WORDS)
TEMPLATE = "{count} {color} {thing}s, {mood}, {place} at {time}"

DEFAULTS: dict[str, Any] = {"groups": 3, "per_group": 3, "unrelated": 2, "rows_per_task": 30, "noise": 0.05,
                            "seed": 0, "test_rows_per_task": 0}


def sentence_params(params: dict[str, Any]) -> dict[str, Any]:
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise DataError(f"dataset.params {sorted(unknown)} are not parameters of text; accepted: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **params}
    for key in ("groups", "per_group", "unrelated", "rows_per_task", "seed", "test_rows_per_task"):
        if not isinstance(p[key], int) or isinstance(p[key], bool) or p[key] < 0:
            raise DataError(f"dataset.params.{key}={p[key]!r} must be a whole number ≥ 0")
    if p["groups"] + p["unrelated"] > len(ATTRIBUTES):
        raise DataError(
            f"dataset.params.groups + unrelated = {p['groups'] + p['unrelated']} exceeds the {len(ATTRIBUTES)} "
            f"attributes of the sentences ({', '.join(ATTRIBUTES)}); lower one of them"
        )
    if p["groups"] * p["per_group"] + p["unrelated"] < 2:
        raise DataError("dataset.params give fewer than 2 tasks; raise groups, per_group or unrelated")
    if p["rows_per_task"] < 10:
        raise DataError(f"dataset.params.rows_per_task={p['rows_per_task']} is too small; use at least 10")
    if not isinstance(p["noise"], (int, float)) or isinstance(p["noise"], bool) or not 0 <= p["noise"] < 0.5:
        raise DataError(f"dataset.params.noise={p['noise']!r} must be a number in [0, 0.5)")
    return p


def make_sentences(params: dict[str, Any]) -> TaskTable:
    p = sentence_params(params)
    rng = np.random.default_rng(p["seed"])
    grouped = p["groups"] * p["per_group"]
    n_tasks = grouped + p["unrelated"]
    attribute_of = [t % p["groups"] for t in range(grouped)] + [p["groups"] + u for u in range(p["unrelated"])]
    texts, Y = _draw(rng, p["rows_per_task"], attribute_of, p["noise"])
    test_rows = None
    if p["test_rows_per_task"]:
        # more sentences of the same tasks from a stream of their own: the other rows are those without them
        extra_texts, extra_Y = _draw(np.random.default_rng([p["seed"], 0x7E57]), p["test_rows_per_task"],
                                     attribute_of, p["noise"])
        test_rows = np.arange(len(Y) + len(extra_Y)) >= len(Y)
        texts, Y = texts + extra_texts, np.concatenate([Y, extra_Y])
    n = len(Y)
    names = [f"task_{t:02d}" for t in range(n_tasks)]
    truth = [[names[t] for t in range(grouped) if attribute_of[t] == g] for g in range(p["groups"])]
    truth += [[names[grouped + u]] for u in range(p["unrelated"])]
    return TaskTable(
        X=np.zeros((n, 0)), Y=Y, task_names=names, task_types=["binary"] * n_tasks, feature_names=["text"],
        truth_groups=truth, texts=texts,
        metadata={"source": "text", "params": p,
                  "attributes": {names[t]: ATTRIBUTES[attribute_of[t]] for t in range(n_tasks)}},
        test_rows=test_rows,
    )


def _draw(rng: np.random.Generator, rows: int, attribute_of: list[int],
          noise: float) -> tuple[list[tuple[str]], np.ndarray]:
    """``rows`` sentences for every task (task t's block labelled for t alone) and their labels."""
    n_tasks = len(attribute_of)
    n = n_tasks * rows
    classes = rng.integers(0, 2, size=(n, len(ATTRIBUTES)))
    texts = []
    for r in range(n):
        words = {a: WORDS[a][classes[r, i]][rng.integers(0, 5)] for i, a in enumerate(ATTRIBUTES)}
        texts.append((TEMPLATE.format(**words),))
    Y = np.full((n, n_tasks), np.nan)
    for t in range(n_tasks):
        sl = slice(t * rows, (t + 1) * rows)
        y = classes[sl, attribute_of[t]].astype(np.float64)
        flip = rng.random(rows) < noise
        Y[sl, t] = np.where(flip, 1.0 - y, y)
    return texts, Y
