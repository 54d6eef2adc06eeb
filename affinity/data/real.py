"""Built-in `yeast`: a real multi-label table, read from a file that the `river` package ships.

Source: the Yeast gene-function data of Elisseeff & Weston ("A kernel method for multi-labelled
classification", NIPS 2001), in the multi-label version distributed with the MULAN library (the
same table as OpenML dataset 40597). The `river` package (BSD-3-Clause) ships it inside its wheel
as ``river/datasets/yeast.csv.gz`` (river ≥ 0.26.1); this loader reads that file directly, so
nothing is downloaded and river itself is not imported. river states no separate licence for the
data: it is redistributed in river's BSD-3-Clause wheel, and is a long-standing public research
benchmark.

Rows: 2417 yeast genes. Features: the 103 numeric columns ``Att1`` … ``Att103`` (micro-array
expression levels and phylogenetic profile values, already scaled; kept as they are, the split
standardizes them). Tasks: the 14 binary label columns ``Class1`` … ``Class14``, one per
top-level functional category; a gene belongs to 4.2 categories on average, and the positive rate
goes from 1.4 % (Class14, 34 genes) to 75 % (Class12).

``label_fraction`` (default 1.0) keeps that share of every task's rows labelled, the others NaN
(sparse multitask labels); the choice is stratified by class, keeps at least 2 rows of each class
of every task, and is seeded by ``seed`` (default 0) with one stream per task.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affinity.data.table import DataError, TaskTable

FEATURES = [f"Att{i}" for i in range(1, 104)]
LABELS = [f"Class{i}" for i in range(1, 15)]
ROWS = 2417
REQUIREMENT = "river>=0.26.1"


def yeast_params(params: dict[str, Any]) -> dict[str, Any]:
    unknown = set(params) - {"label_fraction", "seed"}
    if unknown:
        raise DataError(
            f"dataset.params {sorted(unknown)} are not parameters of yeast; accepted: label_fraction, seed"
        )
    frac = params.get("label_fraction", 1.0)
    if (not isinstance(frac, (int, float, np.integer, np.floating)) or isinstance(frac, bool)
            or not math.isfinite(frac) or not 0.0 < frac <= 1.0):
        raise DataError(f"dataset.params.label_fraction={frac!r} must be a number in (0, 1]")
    seed = params.get("seed", 0)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise DataError(f"dataset.params.seed={seed!r} must be a whole number ≥ 0")
    return {"label_fraction": float(frac), "seed": int(seed)}


def yeast_path() -> Path:
    """The CSV inside the installed river package (found without importing river)."""
    spec = importlib.util.find_spec("river")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the yeast dataset ships with the river package, which is not installed; "
                        f"pip install '{REQUIREMENT}'")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "yeast.csv.gz"
    if not path.is_file():
        raise DataError(f"the installed river package has no {path.name} (it ships from river 0.26.1 on); "
                        f"pip install '{REQUIREMENT}'")
    return path


def make_yeast(params: dict[str, Any]) -> TaskTable:
    p = yeast_params(params)
    path = yeast_path()
    df = pd.read_csv(path)
    missing = [c for c in FEATURES + LABELS if c not in df.columns]
    if missing or len(df) != ROWS:
        raise DataError(f"{path} is not the expected yeast table ({len(df)} rows, missing columns "
                        f"{missing[:5]}); reinstall '{REQUIREMENT}'")
    X = df[FEATURES].to_numpy(dtype=np.float64)
    Y = df[LABELS].to_numpy(dtype=np.float64)
    if p["label_fraction"] < 1.0:
        keep = np.zeros(Y.shape, dtype=bool)
        streams = np.random.SeedSequence(p["seed"]).spawn(Y.shape[1])
        for t in range(Y.shape[1]):
            rng = np.random.default_rng(streams[t])
            for c in (0.0, 1.0):
                rows = np.flatnonzero(Y[:, t] == c)
                n = max(min(2, len(rows)), int(round(p["label_fraction"] * len(rows))))
                keep[rng.choice(rows, size=n, replace=False), t] = True
        Y[~keep] = np.nan
    return TaskTable(
        X=X, Y=Y, task_names=list(LABELS), task_types=["binary"] * len(LABELS), feature_names=list(FEATURES),
        metadata={"source": "yeast", "file": "river/datasets/yeast.csv.gz", **p},
    )
