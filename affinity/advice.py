"""The advice: which grouping to train, how much it is predicted to buy, and how sure that is.

Candidates: the affinity matrix T clustered at a grid of k (and at the k that T's own criterion
picks, ``solver.choose_k``) and, with ``grouping.candidates_from`` ``both`` (default) or ``outputs``,
the base model's output agreement (``affinity.agreement``) clustered at the same k, with k = 1 (one
model for all tasks) and k = n (one model per task) always among them when the manifest's k range
allows. ``grouping.selection``:

- ``outcome`` (default): every candidate grouping is trained as the user would train it — one
  model per group, from scratch (``affinity.group_models``) — on the training rows, and scored by
  the summed loss of its tasks on rows its models were neither trained nor stopped on
  (cross-validation over the training rows, stopped on the validation rows: ``group_check.check_groupings``):
  the **predicted summed loss**. Stopping and scoring on the same rows would favour small groups
  (the best epoch of a noisy curve looks better than it is). With ``grouping.crossfit``
  a k is scored on rows its groups were not built from: the affinity is estimated again on each
  half of the check's folds and one half's folds score the other half's groups at k
  (``affinity.crossfit``); building and scoring groups on the same rows counts the rows' noise as
  gain where tasks have little structure.
  Only splits predicted to gain at least ``grouping.min_gain`` over one model for all, and at
  least ``grouping.min_gain_se`` standard errors of their per-fold gains, are eligible (none: train
  together); one model per task needs only a gain above ``grouping.min_gain_alone`` (it is no choice
  of which tasks go together, and the check, training on 9 of 10 folds, underrates it); among them
  the one with the lowest predicted loss, or the one with fewest groups within
  ``grouping.tolerance`` of it. The
  predicted gain reported is read without the winner's curse (``selection_gain``); where that
  cross-validated gain of the choice is not positive, the split is not advised (train together):
  it gained only on the folds it was chosen on.
  With ``grouping.random_control`` the chosen split is checked, on the same folds, against that many
  random partitions of its group sizes (``random_control``): smaller models can gain over one model for
  all whichever tasks they hold (each stops at its own best epoch, none shares capacity with tasks it
  does not need), and only what the split gains beyond that is advice about the tasks. A split that
  does not beat them is replaced by one model per task if that pays, else one model for all.
- ``affinity``: T's criterion alone, no models trained (cheaper; no predicted loss).

Reliability, recorded beside the choice: the split-half correlation of T's pair-specific part
(T from the even and from the odd sampled subsets, task effects removed by double centering,
Pearson over pairs, and its Spearman–Brown value for all subsets)
and the stability of the chosen groups (adjusted Rand index between them and the groups of T
recomputed on bootstrap resamples of the subsets, same k; for the output agreement's groups, its
groups at the same k from base models retrained from other seeds). A plain verdict sums it up.
"""

from __future__ import annotations

from collections.abc import Callable
import time
from typing import Any

import numpy as np
from sklearn.metrics import adjusted_rand_score

from affinity import agreement
from affinity.affinities import pairwise_affinity
from affinity.compute.base import Backend
from affinity.data.table import SplitTable
from affinity.estimators.base import AffinityEstimate
from affinity.crossfit import Reestimate, crossfit_scores
from affinity.group_check import FoldScores, check_groupings
from affinity.manifest import GroupingSpec, Manifest
from affinity.progress import Progress
from affinity.training import TensorData

STABLE_ARI = 0.8  # mean resampling ARI from which groups are called stable
RELIABLE_SPLIT_HALF = 0.3  # split-half correlation of T (Spearman–Brown) from which T is called informative
BOOTSTRAPS = 5


def candidate_ks(spec: GroupingSpec, n: int) -> list[int]:
    """k values to try: the manifest's k, or a geometric grid over its range with both ends."""
    if isinstance(spec.k, int):
        return [min(spec.k, n)]
    lo, hi = (1, n) if spec.k == "auto" else (spec.k[0], min(spec.k[1], n))
    if hi - lo + 1 <= spec.candidates + 2:
        return list(range(lo, hi + 1))
    inner = np.unique(np.round(np.geomspace(max(lo, 2), min(hi, n - 1), spec.candidates)).astype(int))
    return sorted({lo, hi, *inner.tolist()})


def cluster_at(T: np.ndarray, k: Any, spec: GroupingSpec):
    """The grouping of the solver at k (or a [lo, hi] range) of the affinity-like matrix ``T``, with the spec's
    method and seed."""
    from solver import cluster

    return cluster(T, k, method=spec.method, seed=spec.seed)


def candidate_groupings(T: np.ndarray, spec: GroupingSpec, specific: bool = True) -> tuple[dict[int, Any], int | None]:
    """One grouping per candidate k, and the k that T's own criterion chooses (None if not asked).

    The groups are those of T's pair-specific part (``pair_specific``): a task that gains in every
    subset raises its whole row of T, which pulls it into one big group with the other such tasks
    without saying anything about which tasks help which (on the outcome suite's pooling tasks the
    groups of T were one large group and singletons, ARI 0.01 and 0.29 against the planted groups,
    those of the pair-specific part ARI 0.62 and 0.42)."""
    T = pair_specific(T) if specific else T
    n = T.shape[0]
    ks = candidate_ks(spec, n)
    out = {k: cluster_at(T, k, spec) for k in ks}
    criterion_k = None
    inner = [k for k in ks if 1 < k < n]
    if not isinstance(spec.k, int) and len(inner) >= 2:
        by_criterion = cluster_at(T, (min(inner), max(inner)), spec)
        criterion_k = by_criterion.k
        out[criterion_k] = by_criterion
    return dict(sorted(out.items())), criterion_k


def groups_at(T: np.ndarray, k: int, spec: GroupingSpec) -> list[list[int]]:
    """The groups of affinity T at k as the candidates are made: T's pair-specific part, clustered."""
    return [list(m) for m in cluster_at(pair_specific(T), k, spec).groups]


def size_of(key: Any) -> int:
    """The number of groups of a candidate's key: k, or (k, source) for a second source's grouping at k."""
    return key[0] if isinstance(key, tuple) else int(key)


def candidate_sources(spec: GroupingSpec) -> tuple[str, ...]:
    """Where the candidate groupings come from (``grouping.candidates_from``); the affinity alone without the
    outcome check or with cross-fitting (which rebuilds T's groups)."""
    if spec.selection != "outcome" or spec.crossfit:
        return ("affinity",)
    return {"affinity": ("affinity",), "outputs": ("outputs",), "both": ("affinity", "outputs")}[spec.candidates_from]


def source_of(key: Any, first: str, n: int) -> str | None:
    """The source of a candidate's groups (None for one model for all and one per task, which are no source's)."""
    if not 1 < size_of(key) < n:
        return None
    return key[1] if isinstance(key, tuple) else first


def add_source(groupings: dict[Any, Any], more: dict[int, Any], source: str, n: int) -> dict[Any, Any]:
    """``groupings`` with the inner candidates of a second source under keys (k, source), where they are
    not a partition already among the candidates at that k."""
    out = dict(groupings)  # Grouping labels are canonical (groups numbered by their smallest member)
    seen = {(size_of(kk), tuple(np.asarray(g.labels).tolist())) for kk, g in groupings.items()}
    for k, g in more.items():
        if 1 < k < n and (k, tuple(np.asarray(g.labels).tolist())) not in seen:
            out[(k, source)] = g
    return dict(sorted(out.items(), key=lambda item: (size_of(item[0]), isinstance(item[0], tuple))))


def pair_specific(T: np.ndarray) -> np.ndarray:
    """T without its task effects: the off-diagonal residual of the least-squares fit T_ij ≈ a_i + a_j.

    A task that gains in every subset adds its gain to its whole row of T; that is reliable but says
    nothing about which tasks go together, so reliability is measured on what is left."""
    n = T.shape[0]
    off = ~np.eye(n, dtype=bool)
    if n < 3:
        return np.zeros_like(T)
    M = np.where(off, (T + T.T) / 2, 0.0)
    # Least-squares task effects a of M_ij ≈ a_i + a_j (i ≠ j): row sums r_i = (n − 2) a_i + Σa.
    r = M.sum(1)
    a = (r - r.sum() / (2 * (n - 1))) / (n - 2)
    return np.where(off, M - a[:, None] - a[None, :], 0.0)


def split_half(estimate: AffinityEstimate) -> dict[str, Any] | None:
    """Correlation of the pair-specific part of T from the even and from the odd subsets (None for
    pairwise-only estimators), and its Spearman–Brown value for all subsets."""
    table = estimate.table
    n = len(estimate.task_names)
    if table is None or len(table.subsets) < 4 or n < 3:
        return None
    idx = np.arange(len(table.subsets))
    halves = []
    for part in (idx[0::2], idx[1::2]):
        T, counts, _ = pairwise_affinity([table.subsets[i] for i in part], table.val_loss[part],
                                         estimate.base_val_loss, n, estimate.info.get("pairwise", "mean"))
        halves.append((T, (counts > 0) & (counts.T > 0)))
    upper = np.triu(np.ones((n, n), dtype=bool), 1) & halves[0][1] & halves[1][1]
    a, b = pair_specific(halves[0][0])[upper], pair_specific(halves[1][0])[upper]
    if upper.sum() < 3 or a.std() == 0 or b.std() == 0:
        return {"pairs": int(upper.sum()), "correlation": None, "spearman_brown": None}
    r = float(np.corrcoef(a, b)[0, 1])
    return {"pairs": int(upper.sum()), "correlation": r,
            "spearman_brown": float(2 * r / (1 + r)) if r > -1 else None}


def stability(estimate: AffinityEstimate, labels: np.ndarray, spec: GroupingSpec, seed: int = 0) -> dict[str, Any] | None:
    """ARI between the chosen groups and those of T recomputed on bootstrap resamples of the subsets."""
    table = estimate.table
    k = int(labels.max()) + 1
    n = len(labels)
    if table is None or k in (1, n):
        return None
    rng = np.random.default_rng(seed)
    aris = []
    for _ in range(BOOTSTRAPS):
        pick = rng.integers(0, len(table.subsets), len(table.subsets))
        T, _, _ = pairwise_affinity([table.subsets[i] for i in pick], table.val_loss[pick], estimate.base_val_loss, n,
                                    estimate.info.get("pairwise", "mean"))
        aris.append(float(adjusted_rand_score(labels, cluster_at(pair_specific(T), k, spec).labels)))
    return {"resamples": BOOTSTRAPS, "of": "subsets (bootstrap)", "mean_ari": float(np.mean(aris)),
            "min_ari": float(np.min(aris))}


def agreement_stability(labels: np.ndarray, retrained: list[np.ndarray], spec: GroupingSpec) -> dict[str, Any] | None:
    """ARI between the chosen groups of the output agreement and the agreement's groups, at the same k, of base
    models retrained from other seeds (``retrained``: their predictions, ``agreement.retrained_predictions``)."""
    k = int(labels.max()) + 1
    if not retrained or k in (1, len(labels)):
        return None
    aris = [float(adjusted_rand_score(labels, cluster_at(agreement.correlation(P), k, spec).labels)) for P in retrained]
    return {"resamples": len(aris), "of": "base model retrained from other seeds", "mean_ari": float(np.mean(aris)),
            "min_ari": float(np.min(aris))}


def verdict(k: int, n: int, gain: float | None, reliability: dict[str, Any] | None,
            stable: dict[str, Any] | None, in_sample: float | None = None,
            fold_range: tuple[float, float] | None = None,
            best_split: dict[str, Any] | None = None,
            control: dict[str, Any] | None = None, unheld: float | None = None,
            source: str | None = None) -> tuple[str, str]:
    """(recommendation, one plain sentence) for the chosen k.

    "no reliable structure" when the answer is one of the two trivial groupings (no split predicted to
    pay reliably: k = 1; or each task alone: k = n; ``unheld``: the cross-validated gain of the choice of a
    split that was therefore overruled), when the chosen groups are not stable under
    resampling of the subsets (mean ARI below STABLE_ARI), and whenever the affinity's pair-specific
    part does not replicate across halves of the subsets (then which tasks go together is noise). Groups of
    the output agreement (``source`` "outputs") are judged by ``stable`` alone: the base model retrained from
    other seeds (T's reliability says nothing about them)."""
    outputs = source == "outputs"
    informative = outputs or reliability is None or (reliability.get("spearman_brown") or 0.0) >= RELIABLE_SPLIT_HALF
    gain_text = f"predicted gain over one model for all {gain:+.1%}" if gain is not None else \
        "no predicted loss (grouping.selection: affinity)"
    if gain is not None and fold_range is not None:
        gain_text += f" (per fold {fold_range[0]:+.1%} to {fold_range[1]:+.1%})"
    if gain is not None and in_sample is not None and abs(in_sample - gain) > 0.02:
        # the two readings disagree: say both, the user decides how much to trust the split
        gain_text += f" ({in_sample:+.1%} over all folds, where it was chosen)"
    sizes_only = ""
    if control is not None and "instead_of" in control:
        # the best split did not beat random partitions of its sizes: what it gains is not about the tasks
        sizes_only = (f"; the best split ({control['instead_of']} groups) is predicted no better than random "
                      f"partitions of its group sizes ({control['gain_over_random']:+.1%} ± "
                      f"{control['se']:.1%} over them)")
    if k == 1:
        text = "no reliable structure: train these tasks together (one model for all)"
        if sizes_only:
            return "together", text + sizes_only
        if best_split is not None:
            # what the best split would have bought, and how much the folds disagree: the reason for "together"
            lo, hi = min(best_split["fold_gains"]), max(best_split["fold_gains"])
            text += (f"; the best split ({best_split['k']} groups) is predicted {best_split['predicted_gain']:+.1%} "
                     f"(per fold {lo:+.1%} to {hi:+.1%})")
        if unheld is not None:
            text += f", but choosing a split this way gains {unheld:+.1%} on folds the choice was not made on"
        return "together", text
    if k == n:
        return "separately", f"no reliable structure: train each task on its own ({gain_text}){sizes_only}"
    if control is not None:
        gain_text += (f"; {control['gain_over_random']:+.1%} against random partitions of the same sizes "
                      f"(± {control['se']:.1%})")
    what = f"{k} groups of the base model's output agreement" if outputs else f"{k} groups"
    if informative and stable is not None and stable["mean_ari"] >= STABLE_ARI:
        how = "stable when the base model is retrained from other seeds" if outputs else "stable under resampling"
        return "groups", f"{what}, {how} (ARI {stable['mean_ari']:.2f}): {gain_text}"
    ari = ""
    if stable is not None:
        ari = f" ({'retrained' if outputs else 'resampling'} ARI {stable['mean_ari']:.2f})"
    return "groups", (f"no reliable structure: {what}{ari}, {gain_text}, but which tasks go together "
                      f"is not stable")


def choose(scores: dict[int, FoldScores], candidates: Any, spec: GroupingSpec, folds: list[int] | None = None) -> int:
    """Among ``candidates`` (k values; ``scores`` also holds k = 1, the reference), the choice of
    ``choose_k_from`` on their predicted totals over ``folds`` (all by default)."""
    folds = list(range(scores[1].loss.shape[0])) if folds is None else folds
    totals = {k: scores[k].total(folds) for k in candidates}
    per_fold = {k: fold_gains(scores[k], scores[1], folds) for k in candidates}
    return choose_k_from(totals, scores[1].total(folds), per_fold, spec, n=scores[1].loss.shape[1])


def choose_k_from(totals: dict[int, float], reference: float, per_fold: dict[int, list[float]],
                  spec: GroupingSpec, n: int | None = None) -> int:
    """The candidate k with the lowest predicted total loss, the fewest groups within ``tolerance`` of
    it. Where one model for all (k = 1) is a candidate, only splits predicted to pay are eligible: a
    gain over ``reference`` (one model for all's total) of at least ``min_gain``, and of at least
    ``min_gain_se`` standard errors of its per-fold gains (a gain that one fold's luck carries is not
    a gain); with none eligible, k = 1. One model per task (k = ``n``) is held instead to
    ``min_gain_alone`` where that is set. Keys are k, or (k, source) for a second source's grouping at k
    (``size_of``); among candidates of as many groups, the lower total. Works from the numbers a
    ``groups.json`` records, so a choice rule can be replayed."""
    if 1 in totals:
        totals = {k: v for k, v in totals.items() if k != 1 and _pays(v, reference, per_fold[k], spec, k == n)}
        if not totals:
            return 1
    best = min(totals.values())
    return min((kk for kk, v in totals.items() if v <= best + spec.tolerance * reference),
               key=lambda kk: (size_of(kk), totals[kk]))


def _pays(total: float, reference: float, per_fold: list[float], spec: GroupingSpec, alone: bool = False) -> bool:
    """A split's predicted gain clears ``min_gain`` and ``min_gain_se`` standard errors of its fold gains;
    one model per task (``alone``) clears ``min_gain_alone`` where that is set."""
    gain = (reference - total) / reference
    if alone and spec.min_gain_alone is not None:
        return bool(gain > spec.min_gain_alone)
    return bool(gain >= spec.min_gain and gain >= spec.min_gain_se * standard_error(per_fold))


def standard_error(gains: list[float]) -> float:
    """The standard error of the mean of per-fold gains (0 for a single fold)."""
    g = np.asarray(gains, dtype=float)
    return float(g.std(ddof=1) / np.sqrt(len(g))) if len(g) > 1 else 0.0


def fold_gains(grouping: FoldScores, together: FoldScores, folds: list[int] | None = None) -> list[float]:
    """The gain over one model for all on each fold's scoring rows (their spread: how sure the gain is)."""
    folds = range(grouping.loss.shape[0]) if folds is None else folds
    return [(together.total([f]) - grouping.total([f])) / together.total([f]) for f in folds]


def selection_gain(scores: dict[int, FoldScores], groupings: dict[int, Any], spec: GroupingSpec) -> dict[str, Any]:
    """The gain over one model for all that choosing k this way buys, free of the winner's curse.

    The lowest of several noisy predicted losses is optimistic. So, for every fold, k is chosen on
    the other folds' scores alone and its gain read on that fold (the gain of the selection, as
    cross-validation measures it); the predicted gain is the mean over folds."""
    n_folds = next(iter(scores.values())).loss.shape[0]
    out = []
    for f in range(n_folds):
        rest = [g for g in range(n_folds) if g != f]
        k = choose(scores, groupings, spec, rest)
        ref = scores[1].total([f])
        out.append({"k": size_of(k), **({"source": k[1]} if isinstance(k, tuple) else {}),
                    "gain": (ref - scores[k].total([f])) / ref})
    return {"folds": out, "gain": float(np.mean([f["gain"] for f in out])),
            "description": "for every fold, k chosen on the other folds, its gain read on that fold"}


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
    difference is positive and at least ``min_gain_se`` standard errors of the per-fold differences."""
    folds = range(together.loss.shape[0])
    ref = [together.total([f]) for f in folds]
    drawn = [float(np.mean([r.total([f]) for r in randoms])) for f in folds]
    diffs = [(d - chosen.total([f])) / ref[f] for f, d in zip(folds, drawn)]
    random_gains = [(ref[f] - d) / ref[f] for f, d in zip(folds, drawn)]
    gain, se = float(np.mean(diffs)), standard_error(diffs)
    return {"partitions": len(randoms), "gain_over_random": gain, "se": se, "fold_gains": diffs,
            "random_gain": float(np.mean(random_gains)), "passed": bool(gain > 0 and gain >= spec.min_gain_se * se),
            "description": "gain_over_random: the chosen split's predicted loss below the mean of random partitions "
                           "of its group sizes (same folds), relative to one model for all; random_gain: theirs "
                           "over one model for all"}


def advise(T: np.ndarray, estimate: AffinityEstimate, data: SplitTable, tensors: TensorData, manifest: Manifest,
           base_val_loss: np.ndarray, progress: Progress | None = None,
           backend: Backend | None = None, reestimate: Reestimate | None = None,
           predictions: np.ndarray | None = None,
           retrained: Callable[[], list[np.ndarray]] | None = None) -> tuple[Any, dict[str, Any]]:
    """The recommended grouping and the advice record (candidates, predicted losses, reliability, verdict).

    ``base_val_loss``: per-task validation loss of the base model (one model for all tasks).
    ``reestimate``: the job's estimator on other rows (``affinity.crossfit``); with ``grouping.crossfit`` the
    candidates' k are scored on rows their groups were not built from, without it (or with None) on the
    rows T was estimated from. ``predictions``: θ*'s outputs (rows × tasks, ``affinity.agreement``), the
    candidates' source with ``grouping.candidates_from: outputs``; ``retrained``: returns the predictions of base
    models retrained from other seeds (``agreement.retrained_predictions``), called only when the agreement's groups
    are chosen, for their stability."""
    progress = progress or Progress()
    spec = manifest.grouping
    n = data.n_tasks
    t0 = time.perf_counter()
    progress.start("grouping", 1)
    sources = candidate_sources(spec)
    if "outputs" in sources and predictions is None:
        raise ValueError(f"grouping.candidates_from={spec.candidates_from!r} needs the base model's predictions")

    def groupings_of(source: str) -> tuple[dict[int, Any], int | None]:
        if source == "outputs":
            return candidate_groupings(agreement.correlation(predictions), spec, specific=False)
        return candidate_groupings(T, spec)

    first = sources[0]
    groupings, criterion_k = groupings_of(first)
    for more in sources[1:]:
        groupings = add_source(groupings, groupings_of(more)[0], more, n)
    progress.finish()
    candidates: list[dict[str, Any]] = []
    predicted: dict[int, np.ndarray] = {}
    honest: dict[str, Any] | None = None
    crossfit: dict[str, Any] | None = None
    control: dict[str, Any] | None = None
    if spec.selection == "outcome":
        partitions = {k: [list(m) for m in g.groups] for k, g in groupings.items()}
        partitions.setdefault(1, [list(range(n))])
        fitted = None
        if spec.crossfit and reestimate is not None and any(1 < kk < n for kk in groupings):
            fitted = crossfit_scores(data, tensors, manifest, list(groupings), reestimate,
                                     lambda M, kk: groups_at(M, kk, spec), progress, backend)
        if fitted is not None:
            from solver.grouping import labels_from_groups

            scores, built = fitted
            crossfit = {"halves": 2, "description": "each k scored on folds of the half of the rows its groups "
                                                    "were not built from; half_agreement: ARI between the groups "
                                                    "the two halves give at k",
                        "half_agreement": {str(kk): float(adjusted_rand_score(labels_from_groups(b[0], n),
                                                                              labels_from_groups(b[1], n)))
                                           for kk, b in built.items()}}
        else:
            scores = check_groupings(data, tensors, manifest, partitions, progress, backend)
        predicted = {k: s.task_loss() for k, s in scores.items()}
        reference = float(predicted[1].sum())
        for k, g in groupings.items():
            total = float(predicted[k].sum())
            candidates.append({"k": size_of(k), "source": source_of(k, first, n),
                               "sizes": sorted((len(m) for m in g.groups), reverse=True),
                               "groups": [[data.task_names[i] for i in m] for m in g.groups],
                               "predicted_val_loss": total, "predicted_gain": (reference - total) / reference,
                               "fold_gains": fold_gains(scores[k], scores[1]),
                               "from_criterion": k == criterion_k})
        k = choose(scores, groupings, spec)
        honest = selection_gain(scores, groupings, spec)
        gain = honest["gain"] if k != 1 else 0.0
        free = 1 in groupings  # k may be overruled (a fixed k or range without 1 is the user's: reported only)
        if free and k != 1 and honest["gain"] <= 0:
            # choosing this way does not gain on folds the choice was not made on: the split's gain where it
            # was chosen is those folds' luck
            honest["instead_of"] = size_of(k)
            k, gain = 1, 0.0
        if spec.random_control and crossfit is None and 1 < size_of(k) < n:
            parts = random_partitions([list(m) for m in groupings[k].groups], n, spec.random_control, spec.seed)
            drawn = check_groupings(data, tensors, manifest, dict(enumerate(parts)), progress, backend)
            control = random_control(scores[k], scores[1], list(drawn.values()), spec)
            if free and not control["passed"]:
                # the split's gain is its sizes', not its tasks': one model per task if that pays, else together
                control["instead_of"] = size_of(k)
                k = choose(scores, [kk for kk in (1, n) if kk in groupings], spec)
                gain = (reference - scores[k].total()) / reference
    else:
        reference = float(np.sum(base_val_loss))
        k = criterion_k if criterion_k is not None else next(iter(groupings))
        candidates = [{"k": kk, "sizes": sorted((len(m) for m in g.groups), reverse=True),
                       "groups": [[data.task_names[i] for i in m] for m in g.groups],
                       "from_criterion": kk == criterion_k} for kk, g in groupings.items()]
        gain = None
    grouping = groupings[k]
    chosen_from = source_of(k, first, n)
    reliability = split_half(estimate)
    # T's groups: resamples of the subsets; the output agreement's: θ* retrained from other seeds (resampling the
    # rows of one θ*'s predictions would not say how they move with another θ*)
    if chosen_from == "outputs":
        stable = agreement_stability(grouping.labels, retrained() if retrained is not None else [], spec)
    else:
        stable = stability(estimate, grouping.labels, spec, spec.seed)
    in_sample = ((reference - float(predicted[k].sum())) / reference) if k in predicted else None
    spread = None
    if control is not None and "instead_of" in control:
        per_fold = fold_gains(scores[k], scores[1]) if k != 1 else []
        spread = (min(per_fold), max(per_fold)) if per_fold else None
    elif honest is not None:
        per_fold = [f["gain"] for f in honest["folds"]]
        spread = (min(per_fold), max(per_fold))
    splits = [c for c in candidates if c["k"] != 1 and "fold_gains" in c]
    best_split = min(splits, key=lambda c: c["predicted_val_loss"]) if splits else None
    unheld = honest["gain"] if honest is not None and "instead_of" in honest else None
    recommendation, text = verdict(size_of(k), n, gain, reliability, stable, in_sample, spread, best_split, control, unheld,
                                   source=chosen_from)
    record = {
        "selection": spec.selection,
        "candidates_from": list(sources) if spec.selection == "outcome" else None,
        "chosen_from": chosen_from,
        "recommendation": recommendation,
        "verdict": text,
        "k": size_of(k),
        "predicted_gain": gain,
        "in_sample_gain": in_sample,
        "selection_check": honest,
        "one_model_for_all_val_loss": reference,
        "predicted_val_loss": float(predicted[k].sum()) if k in predicted else None,
        "predicted_task_val_loss": predicted[k].tolist() if k in predicted else None,
        "candidates": candidates,
        "criterion_k": criterion_k,
        "reliability": {"split_half": reliability, "stability": stable},
        "check": "crossfit" if crossfit is not None else ("same rows" if spec.selection == "outcome" else None),
        "crossfit": crossfit,
        "random_control": control,
        "min_gain": spec.min_gain, "min_gain_alone": spec.min_gain_alone, "tolerance": spec.tolerance,
        "seconds": time.perf_counter() - t0,
        "description": ("predicted_val_loss: summed validation loss of one model per group trained from scratch on "
                        "the training rows; predicted_gain: its reduction relative to one model for all tasks"),
    }
    return grouping, record


__all__ = ["add_source", "advise", "candidate_ks", "candidate_sources", "choose_k_from", "cluster_at", "groups_at", "random_control", "random_partitions",
           "split_half", "stability", "standard_error", "verdict"]
