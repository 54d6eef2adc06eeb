"""The choice among checked candidate groupings, from their cross-validated scores.

``choose_k_from``: the lowest predicted summed loss among the splits predicted to pay (``grouping.min_gain``,
``min_gain_se`` standard errors of the per-fold gains read as a Student t bar for few folds, ``se_bar``;
``min_gain_alone`` instead of ``min_gain`` for one model per task), the fewest groups within
``grouping.tolerance`` of it, and one model per task instead of a split of the output agreement that does not
beat it by ``grouping.split_vs_alone_se`` standard errors (``without_split``: the answer where a choice is
overruled); works from the numbers a ``groups.json`` records, so a rule can be replayed. ``selection_gain``: the
gain of choosing this way, read on folds the choice was not made on. ``random_control``: the chosen split
against random partitions of its group sizes. ``seed_spread``: how far one training of a grouping strays from
the check's mean over its seeds.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np
from scipy import stats

from affinity.group_check import FoldScores
from affinity.manifest import GroupingSpec


def size_of(key: Any) -> int:
    """The number of groups of a candidate's key: k, or (k, source) for a second source's grouping at k."""
    return key[0] if isinstance(key, tuple) else int(key)


def choose(scores: dict[int, FoldScores], candidates: Any, spec: GroupingSpec, folds: list[int] | None = None,
           outputs: Collection[Any] = ()) -> int:
    """Among ``candidates`` (k values; ``scores`` also holds k = 1, the reference), the choice of
    ``choose_k_from`` on their predicted totals over ``folds`` (all by default); ``outputs``: the keys of the
    output agreement's groupings."""
    folds = list(range(scores[1].loss.shape[0])) if folds is None else folds
    totals = {k: scores[k].total(folds) for k in candidates}
    per_fold = {k: fold_gains(scores[k], scores[1], folds) for k in candidates}
    return choose_k_from(totals, scores[1].total(folds), per_fold, spec, n=scores[1].loss.shape[1], outputs=outputs)


def choose_k_from(totals: dict[int, float], reference: float, per_fold: dict[int, list[float]],
                  spec: GroupingSpec, n: int | None = None, outputs: Collection[Any] = ()) -> int:
    """The candidate k with the lowest predicted total loss, the fewest groups within ``tolerance`` of
    it. Where one model for all (k = 1) is a candidate, only splits predicted to pay are eligible: a
    gain over ``reference`` (one model for all's total) of at least ``min_gain``, and of at least
    ``min_gain_se`` standard errors of its per-fold gains (a gain small against its spread over the folds is
    not a gain; one that a single fold carries is about one standard error, which the default bar, 0.5, leaves
    to ``selection_gain``); with none eligible, k = 1. One model per task (k = ``n``) is held to ``min_gain_alone``
    instead of ``min_gain`` where that is set (and to ``min_gain_alone_se`` standard errors), and a split of the
    output agreement (its key in ``outputs``) chosen where one model per task is eligible must beat it by
    ``split_vs_alone_se`` standard errors of their per-fold differences, else one model per task. Keys are k, or
    (k, source) for a second source's grouping at k (``size_of``); among candidates of as many groups, the lower
    total. Works from the numbers a ``groups.json`` records, so a choice rule can be replayed."""
    if 1 in totals:
        totals = {k: v for k, v in totals.items() if k != 1 and _pays(v, reference, per_fold[k], spec, k == n)}
        if not totals:
            return 1
    best = min(totals.values())
    chosen = min((kk for kk, v in totals.items() if v <= best + spec.tolerance * reference),
                 key=lambda kk: (size_of(kk), totals[kk]))
    if n is not None and n in totals and chosen in outputs and 1 < size_of(chosen) < n and \
            not _beats_alone(per_fold[chosen], per_fold[n], spec):
        return n
    return chosen


def _beats_alone(split: list[float], alone: list[float], spec: GroupingSpec) -> bool:
    """A split beats one model per task by ``split_vs_alone_se`` standard errors of their per-fold differences
    (``se_bar``; 0: off). Which tasks a split puts together is advice only where it beats training each task on its
    own, which needs no choice of groups: a split that gains over one model for all no more than one model per task
    does gains from its group sizes (smaller models), not its tasks. Asked of the output agreement's splits: θ*
    fitted the rows the check's folds score, so their fold gains are flattered where tasks have no structure
    (benchmarks/README.md, "The agreement on the validation rows"); T's groups come from validation losses the
    check never scores."""
    if spec.split_vs_alone_se <= 0:
        return True
    diffs = _differences(split, alone)
    return bool(diffs.mean() > 0 and diffs.mean() >= se_bar(spec.split_vs_alone_se, len(diffs)) * standard_error(diffs))


def _differences(split: list[float], alone: list[float]) -> np.ndarray:
    """Per fold, a split's gain over one model for all minus one model per task's."""
    return np.asarray(split, dtype=float) - np.asarray(alone, dtype=float)


def _pays(total: float, reference: float, per_fold: list[float], spec: GroupingSpec, alone: bool = False) -> bool:
    """A split's predicted gain clears ``min_gain`` and ``min_gain_se`` standard errors of its fold gains (as
    ``se_bar`` reads them for that many folds); one model per task (``alone``) clears ``min_gain_alone`` instead of
    ``min_gain`` where that is set, and ``min_gain_alone_se`` standard errors (by default ``min_gain_se``'s)."""
    gain = (reference - total) / reference
    if alone and spec.min_gain_alone is not None:
        return bool(gain > spec.min_gain_alone and
                    gain >= se_bar(spec.alone_se(), len(per_fold)) * standard_error(per_fold))
    return bool(gain >= spec.min_gain and gain >= se_bar(spec.min_gain_se, len(per_fold)) * standard_error(per_fold))


def without_split(scores: dict[Any, FoldScores], groupings: Any, spec: GroupingSpec, n: int, overruled: Any) -> Any:
    """The answer where a choice (``overruled``) is not advised — the selection check read no gain for it on folds
    it was not chosen on, or the chosen split did not beat random partitions of its sizes: one model per task if it
    pays (``choose`` between the two trivial groupings; it claims nothing about which tasks go together, so there is
    no choice among groups to have been lucky in), else one model for all. One model per task overruled itself: one
    model for all."""
    return choose(scores, [kk for kk in (1, n) if kk in groupings and kk != overruled], spec)


def split_over_alone(scores: dict[Any, FoldScores], groupings: Any, spec: GroupingSpec, chosen: Any,
                     n: int) -> dict[str, Any] | None:
    """Where the choice (``chosen``, ``choose``'s) is one model per task because the best split did not beat it
    (``split_vs_alone_se``): that split and its predicted gain over one model per task (mean of the per-fold
    differences, relative to one model for all, and their standard error); else None."""
    if spec.split_vs_alone_se <= 0 or chosen != n:
        return None
    split = choose(scores, groupings, spec.model_copy(update={"split_vs_alone_se": 0.0}))
    if not 1 < size_of(split) < n:
        return None
    diffs = _differences(fold_gains(scores[split], scores[1]), fold_gains(scores[n], scores[1]))
    return {"instead_of": size_of(split), "gain_over_alone": float(diffs.mean()), "se": standard_error(diffs.tolist()),
            "description": "the best split's predicted loss below one model per task's, relative to one model for "
                           "all (mean over the folds), and its standard error"}


def se_bar(standard_errors: float, folds: int) -> float:
    """How many standard errors of the mean of ``folds`` per-fold gains a gain must clear for the confidence that
    ``standard_errors`` give under a normal: the Student t quantile with folds − 1 degrees of freedom (the standard
    error of a few folds is itself uncertain: 1 normal standard error, 84% one-sided, is 1.06 with 10 folds and
    1.32 with 3). One fold or fewer: ``standard_errors`` as given (the standard error is then 0)."""
    if folds < 2 or standard_errors <= 0:
        return float(standard_errors)
    return float(stats.t.ppf(stats.norm.cdf(standard_errors), folds - 1))


def standard_error(gains: list[float]) -> float:
    """The standard error of the mean of per-fold gains (0 for a single fold)."""
    g = np.asarray(gains, dtype=float)
    return float(g.std(ddof=1) / np.sqrt(len(g))) if len(g) > 1 else 0.0


def fold_gains(grouping: FoldScores, together: FoldScores, folds: list[int] | None = None) -> list[float]:
    """The gain over one model for all on each fold's scoring rows (their spread: how sure the gain is)."""
    folds = range(grouping.loss.shape[0]) if folds is None else folds
    return [(together.total([f]) - grouping.total([f])) / together.total([f]) for f in folds]


def seed_spread(grouping: FoldScores, together: FoldScores) -> float | None:
    """How far one training of ``grouping`` strays from seed to seed: the standard deviation over the check's seeds of
    its summed loss on a fold's scoring rows, relative to one model for all's there (pooled over the folds: the root
    mean of the per-fold variances). The predicted gain is read from the mean over the seeds; a user who trains each
    group once gets one draw, so this is the spread of their gain around it. None with one check seed."""
    mine, ref = grouping.seed_totals(), together.seed_totals()
    if mine is None or ref is None or mine.shape[0] < 2:
        return None
    # folds both were scored on (a grouping checked on some folds only, ``check_groupings``' folds, sums to 0 elsewhere)
    scored = (ref.mean(axis=0) > 0) & np.all(mine > 0, axis=0)
    if not scored.any():
        return None
    relative = mine[:, scored] / ref.mean(axis=0)[scored]
    return float(np.sqrt(np.mean(relative.var(axis=0, ddof=1))))


def selection_gain(scores: dict[int, FoldScores], groupings: dict[int, Any], spec: GroupingSpec,
                   outputs: Collection[Any] = ()) -> dict[str, Any]:
    """The gain over one model for all that choosing k this way buys, free of the winner's curse.

    The lowest of several noisy predicted losses is optimistic. So, for every fold, k is chosen on
    the other folds' scores alone and its gain read on that fold (the gain of the selection, as
    cross-validation measures it); the predicted gain is the mean over folds. ``holds``: it is above
    ``grouping.selection_min_gain`` (else the split gained only on the folds it was chosen on)."""
    n_folds = next(iter(scores.values())).loss.shape[0]
    out = []
    for f in range(n_folds):
        rest = [g for g in range(n_folds) if g != f]
        k = choose(scores, groupings, spec, rest, outputs)
        ref = scores[1].total([f])
        out.append({"k": size_of(k), **({"source": k[1]} if isinstance(k, tuple) else {}),
                    "gain": (ref - scores[k].total([f])) / ref})
    gain = float(np.mean([f["gain"] for f in out]))
    return {"folds": out, "gain": gain, "holds": gain > spec.selection_min_gain,
            "description": "for every fold, k chosen on the other folds, its gain read on that fold; holds: the gain "
                           "is above grouping.selection_min_gain"}


def random_partitions(groups: list[list[int]], n: int, count: int, seed: int) -> list[list[list[int]]]:
    """``count`` random partitions of the n tasks into groups of the sizes of ``groups`` (seeded)."""
    rng = np.random.default_rng(seed)
    cuts = np.cumsum([0, *(len(g) for g in groups)])
    out = []
    for _ in range(count):
        perm = rng.permutation(n).tolist()
        out.append([perm[a:b] for a, b in zip(cuts[:-1], cuts[1:])])
    return out


def random_control(chosen: FoldScores, together: FoldScores, randoms: list[FoldScores],
                   spec: GroupingSpec) -> dict[str, Any]:
    """How much the chosen split beats random partitions of its group sizes, fold by fold.

    On each fold: (mean summed loss of the random partitions − the chosen split's) / one model for all's.
    A split gains from its sizes alone (smaller models, each stopped for fewer tasks) as much as from
    which tasks it puts together; only the second is advice about the tasks. ``passed``: the mean
    difference is positive and at least ``min_gain_se`` standard errors of the per-fold differences (``se_bar``)."""
    folds = range(together.loss.shape[0])
    ref = [together.total([f]) for f in folds]
    drawn = [float(np.mean([r.total([f]) for r in randoms])) for f in folds]
    diffs = [(d - chosen.total([f])) / ref[f] for f, d in zip(folds, drawn)]
    random_gains = [(ref[f] - d) / ref[f] for f, d in zip(folds, drawn)]
    gain, se = float(np.mean(diffs)), standard_error(diffs)
    return {"partitions": len(randoms), "gain_over_random": gain, "se": se, "fold_gains": diffs,
            "random_gain": float(np.mean(random_gains)),
            "passed": bool(gain > 0 and gain >= se_bar(spec.min_gain_se, len(diffs)) * se),
            "description": "gain_over_random: the chosen split's predicted loss below the mean of random partitions "
                           "of its group sizes (same folds), relative to one model for all; random_gain: theirs "
                           "over one model for all"}


__all__ = ["choose", "choose_k_from", "fold_gains", "random_control", "random_partitions", "se_bar", "seed_spread",
           "selection_gain", "size_of", "split_over_alone", "standard_error", "without_split"]
