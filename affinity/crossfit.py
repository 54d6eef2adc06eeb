"""Cross-fitted check: candidate groupings scored only on rows they were not built from.

The advice builds its candidate groupings from an affinity estimated on the training and validation
rows; the check (``affinity.group_check``) then scores groupings by cross-validation on those same
rows. Where tasks have little structure the groupings fit the rows' noise — the pairs that happened
to help each other on these rows — and a check on the same rows counts that noise as gain (on the
outcome suite's unrelated tasks the check predicted +2.7% for a split that measured −0.7% on fresh
rows, where random partitions of the same sizes measured +1.9%).

Cross-fitting removes it. The check's folds fall into two halves (folds 0 … F/2 − 1 and the rest;
each fold's rows spread over every task, so each half does too). The affinity is estimated again on
each half's rows alone (``reestimate``: the job's estimator on the half's training and validation
rows) and clustered at every candidate k; the folds of one half score the groupings built on the
other half. A k's predicted loss is then that of the procedure — affinity, groups at k, one model
per group — on rows the groups never saw, and the choice rule (``choice.choose``) reads it like the
plain check's. One model for all and one model per task do not depend on the affinity: their scores
are the plain check's. The grouping recommended at the chosen k is the one built on all rows (at
least as good as a half's, so the predicted gain errs low).

Cost: the estimator twice more on half the rows, and the check's models for two sets of groups.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from affinity.compute.base import Backend
from affinity.data.table import SplitTable
from affinity.group_check import FoldScores, check_groupings, cv_folds
from affinity.manifest import Manifest
from affinity.progress import Progress
from affinity.training import TensorData

Reestimate = Callable[[TensorData], np.ndarray]  # the job's estimator on a half's rows -> affinity matrix T


def halves(tensors: TensorData, manifest: Manifest) -> tuple[list[TensorData], int]:
    """The two halves' data (training and validation cells of the half's rows) and the first fold of half 1.

    The halves are made of the check's own folds (``cv_folds`` with the grouping's folds, seed and
    stopping), so every fold's rows lie in one half. With ``check_stop: validation`` the folds cover the
    training rows only and the check never scores validation rows: each half keeps all of them."""
    spec = manifest.grouping
    views = cv_folds(tensors, spec.folds, spec.seed, spec.check_stop)
    first = spec.folds // 2
    out = []
    for part in (views[:first], views[first:]):
        rows = torch.stack([v.test.any(dim=1) for v in part]).any(dim=0)[:, None]
        val = tensors.val if spec.check_stop == "validation" else tensors.val & rows
        out.append(TensorData(tensors.X, tensors.Y, tensors.train & rows, val, tensors.binary))
    return out, first


def crossfit_scores(data: SplitTable, tensors: TensorData, manifest: Manifest, ks: list[int],
                    reestimate: Reestimate, cluster: Callable[[np.ndarray, int], list[list[int]]],
                    progress: Progress | None = None, backend: Backend | None = None
                    ) -> tuple[dict[int, FoldScores], dict[int, list[list[list[int]]]]] | None:
    """Per candidate k, the cross-fitted fold scores (module docstring), and the groupings built on each half;
    None when a half leaves some task without training or validation rows (too few rows to cross-fit).

    ``cluster(T, k)``: the groups of affinity T at k (the advice's own clustering of T's pair-specific part)."""
    n = data.n_tasks
    parts, first = halves(tensors, manifest)
    if any(bool((p.train.sum(0) == 0).any() or (p.val.sum(0) == 0).any()) for p in parts):
        return None
    built: dict[int, list[list[list[int]]]] = {}
    partitions: dict[Any, list[list[int]]] = {1: [list(range(n))], n: [[i] for i in range(n)]}
    inner = [k for k in ks if 1 < k < n]
    for h, part in enumerate(parts):
        T = reestimate(part)
        for k in inner:
            groups = [sorted(int(i) for i in g) for g in cluster(T, k)]
            built.setdefault(k, []).append(groups)
            partitions[(h, k)] = groups
    # each half's groupings are scored only on the other half's folds
    folds = {(h, k): list(range(first, manifest.grouping.folds)) if h == 0 else list(range(first))
             for h in (0, 1) for k in inner}
    scores = check_groupings(data, tensors, manifest, partitions, progress, backend, folds)
    out = {1: scores[1], n: scores[n]}
    for k in inner:
        # folds of half 0 score the groups built on half 1, and the other way round
        loss = np.concatenate([scores[(1, k)].loss[:first], scores[(0, k)].loss[first:]])
        rows = np.concatenate([scores[(1, k)].rows[:first], scores[(0, k)].rows[first:]])
        seeds = None if scores[(1, k)].by_seed is None else \
            np.concatenate([scores[(1, k)].by_seed[:, :first], scores[(0, k)].by_seed[:, first:]], axis=1)
        out[k] = FoldScores(loss, rows, seeds)
    return {k: out[k] for k in sorted(out) if k in ks or k == 1}, built


__all__ = ["crossfit_scores", "halves"]
