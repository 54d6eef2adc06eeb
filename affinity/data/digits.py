"""Built-in `digits`: scikit-learn's bundled 8×8 digits as a multitask table (nothing downloaded)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.datasets import load_digits

from affinity.data.table import DataError, TaskTable

DERIVED = {
    "even": lambda d: d % 2 == 0,
    "greater_than_4": lambda d: d > 4,
    "prime": lambda d: np.isin(d, (2, 3, 5, 7)),
    "round_shape": lambda d: np.isin(d, (0, 6, 8, 9)),
    "multiple_of_3": lambda d: np.isin(d, (0, 3, 6, 9)),
}


def make_digits(params: dict[str, Any]) -> TaskTable:
    """Tasks: one-vs-rest per digit (digit_0 … digit_9) and derived properties (even, > 4, ...).

    ``label_fraction`` (default 1.0) keeps that share of rows labelled per task (seeded by
    ``seed``), to mimic sparse multitask labels.
    """
    unknown = set(params) - {"label_fraction", "seed"}
    if unknown:
        raise DataError(f"dataset.params {sorted(unknown)} are not parameters of digits; accepted: label_fraction, seed")
    frac = float(params.get("label_fraction", 1.0))
    if not 0.0 < frac <= 1.0:
        raise DataError(f"dataset.params.label_fraction={frac} must be in (0, 1]")
    bunch = load_digits()
    X = bunch.data.astype(np.float64)
    d = bunch.target
    names = [f"digit_{k}" for k in range(10)] + list(DERIVED)
    cols = [(d == k) for k in range(10)] + [f(d) for f in DERIVED.values()]
    Y = np.stack(cols, axis=1).astype(np.float64)
    if frac < 1.0:
        rng = np.random.default_rng(int(params.get("seed", 0)))
        Y[rng.random(Y.shape) >= frac] = np.nan
    return TaskTable(
        X=X, Y=Y, task_names=names, task_types=["binary"] * len(names),
        feature_names=[f"pixel_{i}" for i in range(X.shape[1])],
        metadata={"source": "digits", "label_fraction": frac},
    )
