"""The check of candidate groupings: each trained as the user would, scored by cross-validation.

A user trains one model per group, from scratch, on the training rows and early-stops it on the
validation rows. To predict what that buys without touching the held-out test rows, rows are cut
into ``grouping.folds`` folds (whole rows, so a row's tasks stay together; spread evenly over each
task's rows) and every row of the folds is scored once by models that neither trained nor stopped
on it. ``grouping.check_stop``:

- ``validation`` (default): the folds cover the training rows; for fold f the group models train
  on the other folds and early-stop on the validation rows — the very rows the user's models will
  stop on, so a small group's stopping is as noisy in the check as it will be for the user — and
  are scored on fold f. The validation rows are never scored: the candidates' groups were built
  from the per-subset losses on them, and scoring groups on the rows they were built from counts
  those rows' noise as gain where tasks have little structure.
- ``share``: the folds cover the training and validation rows; for fold f the models early-stop on the
  next s folds, s the validation rows' share of the rows times the folds (3 of 10 at a 0.3 validation
  share: as many stopping rows as the user's models have), train on the others and are scored on f.
- ``fold``: the folds cover the training and validation rows; for fold f the models train on the
  other folds but one, early-stop on fold f + 1 and are scored on f. Each model stops on one fold
  (a fifth of the rows with 5 folds) instead of the validation share, which makes small groups
  look worse than they will be (benchmarks/README.md, "Outcome suite").

Stopping and scoring on the same rows would favour small groups (the best epoch of a noisy curve
looks better than it is).

A group that appears in several candidate groupings (one model for all, one per task and the SDP
groups at neighbouring k share many) is trained once per fold: every fold's distinct groups are
stacked into one ``finetune_subsets`` call. With ``grouping.check_seeds`` > 1 every fold's models
are trained once per seed (initialization and batch order) and their per-task losses averaged: the
same folds, less of one training's luck; each seed's losses are kept as well (``FoldScores.by_seed``), so the
advice can say how far one training's gain strays from seed to seed (``choice.seed_spread``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from affinity.compute.base import Backend
from affinity.data.table import SplitTable
from affinity.finetune import finetune_subsets
from affinity.kinds import make_model
from affinity.manifest import Manifest
from affinity.progress import Progress
from affinity.training import TensorData


def cv_folds(tensors: TensorData, folds: int, seed: int, stop: str = "fold") -> list[TensorData]:
    """``folds`` views of the data: (train, stop, score) for every fold f.

    ``stop`` "fold": the training and validation rows are dealt to folds; a view trains on the other folds
    but one, stops on fold f + 1 and scores fold f. "share": as "fold", stopping on folds f + 1 … f + s
    (``stop_folds``). "validation": only the training rows are dealt to
    folds; a view trains on the other folds, stops on the validation rows — the very rows the user's
    models will stop on — and scores fold f. Rows are dealt to folds in turn, task by task (ordered by
    their first labelled task, at random within it), so each task's rows spread evenly; held-out test
    rows are never in any fold."""
    cells = tensors.train | tensors.val if stop in ("fold", "share") else tensors.train
    labelled = cells.any(dim=1).cpu()
    rows = torch.nonzero(labelled).squeeze(1)
    gen = torch.Generator().manual_seed(seed)
    shuffled = rows[torch.randperm(len(rows), generator=gen)]
    first_task = cells.cpu().to(torch.int8).argmax(dim=1)[shuffled]
    ordered = shuffled[torch.sort(first_task, stable=True).indices]
    fold = torch.full((cells.shape[0],), -1, dtype=torch.long)
    fold[ordered] = torch.arange(len(ordered)) % folds
    fold = fold.to(cells.device)
    span = stop_folds(tensors, folds, stop)
    out = []
    for f in range(folds):
        score = cells & (fold == f)[:, None]
        after = (fold - f) % folds  # how many folds after f each row's fold lies (rows in no fold: masked by cells)
        stopping = tensors.val if stop == "validation" else cells & ((after >= 1) & (after <= span))[:, None]
        out.append(TensorData(tensors.X, tensors.Y, cells & ~score & ~stopping, stopping, tensors.binary, score))
    return out


# The progress stages of the check's passes: the candidates, then (where a split is chosen) its random control.
CHECK_STAGE = "checking groupings"
CONTROL_STAGE = "checking random partitions"


def stop_folds(tensors: TensorData, folds: int, stop: str) -> int:
    """How many folds each check model stops on: one ("fold"); for "share" as many as the validation
    rows' share of the labelled training and validation cells (rounded, at least 1, leaving at least
    one fold to train on), so the check's models stop on as many rows as the user's will."""
    if stop != "share":
        return 1
    val, train = float(tensors.val.sum()), float(tensors.train.sum())
    share = val / max(val + train, 1.0)
    return int(min(max(round(share * folds), 1), folds - 2))


def group_fold_losses(data: SplitTable, tensors: TensorData, manifest: Manifest, groups: list[tuple[int, ...]],
                      progress: Progress | None = None, backend: Backend | None = None,
                      needed: list[set[int]] | None = None, label: str = CHECK_STAGE
                      ) -> tuple[np.ndarray, np.ndarray, dict[tuple[int, int], np.ndarray]]:
    """Every group's model on every fold (or on the folds ``needed[g]`` names for group g): per-task losses
    on the fold's scoring rows and their counts.

    Returns ``(loss, rows, seeds)``: loss and rows ``(folds, len(groups), n_tasks)``, loss the mean over the
    check's seeds, NaN where the task is not in the group, has no scoring rows in the fold, or the group was not
    needed there; ``seeds[(f, g)]``: group g's members' losses on fold f from each seed, ``(seeds, len(g))``
    (the group's members in the order of ``groups[g]``; empty with one seed)."""
    spec = manifest.grouping
    views = cv_folds(tensors, spec.folds, spec.seed, spec.check_stop)
    n = data.n_tasks
    loss = np.full((len(views), len(groups), n), np.nan)
    rows = np.zeros((len(views), 1, n))
    # Large groups first: shards of similar sizes, and the longest-running models start first.
    order = sorted(range(len(groups)), key=lambda g: -len(groups[g]))
    seeds = [manifest.training.seed + s for s in range(spec.check_seeds)]
    by_seed: dict[tuple[int, int], np.ndarray] = {}
    for f, view in enumerate(views):
        todo = [g for g in order if needed is None or f in needed[g]]
        rows[f, 0] = view.test.sum(0).cpu().numpy()
        if not todo:
            continue
        runs = []
        for i, seed in enumerate(seeds):
            fresh = make_model(manifest.model, data, seed).to(tensors.X.device)
            stage = f"{label} {f * len(seeds) + i + 1}/{len(views) * len(seeds)}: fold {f + 1}"
            _, scored = finetune_subsets(fresh, view, [groups[g] for g in todo],
                                         manifest.training.model_copy(update={"seed": seed}),
                                         manifest.estimation.exact_batch, progress, backend,
                                         stage=stage + (f", seed {seed}" if len(seeds) > 1 else ""),
                                         return_test=True)
            runs.append(scored)
        scored = np.mean(runs, axis=0)
        for r, g in enumerate(todo):
            members = list(groups[g])
            loss[f, g, members] = scored[r, :len(members)]
            if len(runs) > 1:
                by_seed[(f, g)] = np.stack([run[r, :len(members)] for run in runs])
    loss = np.where(rows > 0, loss, np.nan)
    return loss, np.broadcast_to(rows, loss.shape), by_seed


def check_groupings(data: SplitTable, tensors: TensorData, manifest: Manifest,
                    groupings: dict[Any, list[list[int]]], progress: Progress | None = None,
                    backend: Backend | None = None, folds: dict[Any, list[int]] | None = None,
                    label: str = CHECK_STAGE) -> dict[Any, "FoldScores"]:
    """Cross-validated per-task losses of every candidate grouping (module docstring); ``folds``: the folds a
    grouping is scored on where not all (its scores elsewhere are NaN); ``label``: the progress stage's name."""
    distinct: dict[tuple[int, ...], int] = {}
    needed: list[set[int]] = []
    every = set(range(manifest.grouping.folds))
    for key, groups in groupings.items():
        for g in groups:
            i = distinct.setdefault(tuple(sorted(g)), len(distinct))
            if i == len(needed):
                needed.append(set())
            needed[i] |= set(folds[key]) if folds and key in folds else every
    keys = list(distinct)
    loss, rows, by_seed = group_fold_losses(data, tensors, manifest, keys, progress, backend, needed, label)
    n_seeds = manifest.grouping.check_seeds
    out = {}
    for key, groups in groupings.items():
        per_fold = np.full((loss.shape[0], data.n_tasks), np.nan)
        counts = np.zeros((loss.shape[0], data.n_tasks))
        seeds = np.full((n_seeds, loss.shape[0], data.n_tasks), np.nan) if by_seed else None
        for g in groups:
            members = list(g)
            i = distinct[tuple(sorted(g))]
            per_fold[:, members] = loss[:, i, members]
            counts[:, members] = rows[:, i, members]
            for f in range(loss.shape[0] if seeds is not None else 0):
                if (f, i) in by_seed:
                    seeds[:, f, list(keys[i])] = by_seed[(f, i)]
        if seeds is not None:  # NaN where a task has no scoring rows, as in ``loss``
            seeds = np.where(counts[None] > 0, seeds, np.nan)
        out[key] = FoldScores(per_fold, counts, seeds)
    return out


class FoldScores:
    """One grouping's per-task losses on every fold's scoring rows (``loss``, ``rows``: folds × tasks; ``by_seed``:
    seeds × folds × tasks, each check seed's losses where the check trained several, NaN as in ``loss``; ``loss`` is
    their mean)."""

    def __init__(self, loss: np.ndarray, rows: np.ndarray, by_seed: np.ndarray | None = None) -> None:
        self.loss, self.rows, self.by_seed = loss, rows, by_seed

    def task_loss(self, folds: list[int] | None = None) -> np.ndarray:
        """Each task's loss over the scoring rows of ``folds`` (all by default): the row-weighted mean."""
        pick = slice(None) if folds is None else folds
        w = self.rows[pick]
        total = np.nansum(np.nan_to_num(self.loss[pick]) * w, axis=0)
        return total / np.maximum(w.sum(axis=0), 1)

    def total(self, folds: list[int] | None = None) -> float:
        """The summed per-task loss over ``folds``' scoring rows."""
        return float(self.task_loss(folds).sum())

    def seed_totals(self) -> np.ndarray | None:
        """Each check seed's summed per-task loss on each fold's scoring rows, ``(seeds, folds)``; None with one
        seed."""
        if self.by_seed is None:
            return None
        # as ``total([f])``: a fold's per-task loss is already the mean over its scoring rows (NaN where it has none)
        return np.nansum(self.by_seed, axis=2)


__all__ = ["CHECK_STAGE", "CONTROL_STAGE", "FoldScores", "check_groupings", "cv_folds", "group_fold_losses"]
