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
  together); one model per task needs a gain above ``grouping.min_gain_alone`` instead of ``min_gain``
  (it is no choice of which tasks go together, and the check, training on 9 of 10 folds, underrates
  it) and the same standard-error bar; among them
  the one with the lowest predicted loss, or the one with fewest groups within
  ``grouping.tolerance`` of it. The
  predicted gain reported is read without the winner's curse (``selection_gain``); where that
  cross-validated gain of the choice is not positive, the split is not advised (one model per task if
  that pays, else train together, as after the random control): it gained only on the folds it was
  chosen on.
  With ``grouping.random_control`` the chosen split is checked, on the same folds, against that many
  random partitions of its group sizes (``random_control``): smaller models can gain over one model for
  all whichever tasks they hold (each stops at its own best epoch, none shares capacity with tasks it
  does not need), and only what the split gains beyond that is advice about the tasks. A split that
  does not beat them is replaced by one model per task if that pays, else one model for all.
  The agreement's groups come from θ*, which fitted the training labels the folds score; with
  ``grouping.agreement_crossfit`` they are scored, fold by fold, with the groups of θ* retrained without
  that fold (``agreement_fold_scores``): in the chosen split's random control (``control``) or for
  every agreement candidate (``all``). With ``grouping.agreement_consensus`` the agreement's candidates are read from
  θ* and the base models retrained from other seeds (``agreement_candidates``): the meet of their groupings at each k
  or the groupings of their mean agreement.
- ``affinity``: T's criterion alone, no models trained (cheaper; no predicted loss).

The choice rules are ``affinity.choice``'s. Reliability, recorded beside the choice, and the plain verdict that
sums it up are ``affinity.reliability``'s: the split-half correlation of T's pair-specific part and the
stability of the chosen groups (under resamples of the subsets for T's; for the output agreement's, against
base models retrained from other seeds).
"""

from __future__ import annotations

from collections.abc import Callable
import time
from typing import Any

import numpy as np
from sklearn.metrics import adjusted_rand_score

from affinity import agreement
from affinity.choice import (choose, fold_gains, random_control, random_partitions, seed_spread, selection_gain,
                             size_of, split_over_alone, without_split)
from affinity.compute.base import Backend
from affinity.crossfit import Reestimate, crossfit_scores
from affinity.data.table import SplitTable
from affinity.estimators.base import AffinityEstimate
from affinity.group_check import CHECK_STAGE, CONTROL_STAGE, FoldScores, check_groupings
from affinity.manifest import GroupingSpec, Manifest
from affinity.progress import Progress
from affinity.reliability import agreement_stability, cluster_at, pair_specific, split_half, stability, verdict
from affinity.training import TensorData


def candidate_ks(spec: GroupingSpec, n: int) -> list[int]:
    """k values to try: the manifest's k, or a geometric grid over its range with both ends."""
    if isinstance(spec.k, int):
        return [min(spec.k, n)]
    lo, hi = (1, n) if spec.k == "auto" else (spec.k[0], min(spec.k[1], n))
    if hi - lo + 1 <= spec.candidates + 2:
        return list(range(lo, hi + 1))
    inner = np.unique(np.round(np.geomspace(max(lo, 2), min(hi, n - 1), spec.candidates)).astype(int))
    return sorted({lo, hi, *inner.tolist()})


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


def agreement_candidates(predictions: np.ndarray, retrained: Callable[[], list[np.ndarray]] | None,
                         spec: GroupingSpec) -> tuple[dict[int, Any], int | None]:
    """The output agreement's candidate groupings: of θ*'s agreement (``predictions``), or with
    ``grouping.agreement_consensus`` of θ*'s and the retrained base models' (``retrained``): the meet of their
    groupings at each k (``consensus_groupings``) or the groupings of their mean agreement."""
    if spec.agreement_consensus == "off" or retrained is None:
        return candidate_groupings(agreement.correlation(predictions), spec, specific=False)
    outputs = [predictions, *retrained()]
    if spec.agreement_consensus == "meet":
        return consensus_groupings(outputs, spec), None
    return candidate_groupings(np.mean([agreement.correlation(O) for O in outputs], axis=0), spec, specific=False)


def consensus_groupings(outputs: list[np.ndarray], spec: GroupingSpec) -> dict[int, Any]:
    """The output agreement's candidates with ``grouping.agreement_consensus``: at every candidate k, the meet of
    the groupings at k of each base model's agreement (``outputs``: θ*'s predictions first, then the retrained
    models'): two tasks share a group only where every model's agreement puts them together. Keyed by the meet's
    number of groups (the first k to give a partition keeps it); one model for all and one per task as given."""
    from solver.grouping import Grouping

    n = outputs[0].shape[1]
    agreements = [agreement.correlation(O) for O in outputs]
    first = candidate_groupings(agreements[0], spec, specific=False)[0]
    out: dict[int, Any] = {}
    for k, grouping in first.items():
        if not 1 < k < n:
            out.setdefault(k, grouping)
            continue
        labels = [np.asarray(grouping.labels), *(np.asarray(cluster_at(R, k, spec).labels) for R in agreements[1:])]
        meet_labels = np.unique(np.stack(labels, 1), axis=0, return_inverse=True)[1].ravel()
        meet = Grouping.from_labels(agreements[0], meet_labels, method=f"consensus of {len(outputs)} ({grouping.method})",
                                    relaxation_objective=None, seconds=0.0)
        out.setdefault(meet.k, meet)
    return dict(sorted(out.items()))


def groups_at(T: np.ndarray, k: int, spec: GroupingSpec) -> list[list[int]]:
    """The groups of affinity T at k as the candidates are made: T's pair-specific part, clustered."""
    return [list(m) for m in cluster_at(pair_specific(T), k, spec).groups]


def candidate_sources(spec: GroupingSpec) -> tuple[str, ...]:
    """Where the candidate groupings come from (``GroupingSpec.sources``)."""
    return spec.sources()


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


def advise(T: np.ndarray, estimate: AffinityEstimate, data: SplitTable, tensors: TensorData, manifest: Manifest,
           base_val_loss: np.ndarray, progress: Progress | None = None,
           backend: Backend | None = None, reestimate: Reestimate | None = None,
           predictions: np.ndarray | None = None,
           retrained: Callable[[], list[np.ndarray]] | None = None,
           fold_predictions: Callable[[], list[np.ndarray]] | None = None) -> tuple[Any, dict[str, Any]]:
    """The recommended grouping and the advice record (candidates, predicted losses, reliability, verdict).

    ``base_val_loss``: per-task validation loss of the base model (one model for all tasks).
    ``reestimate``: the job's estimator on other rows (``affinity.crossfit``); with ``grouping.crossfit`` the
    candidates' k are scored on rows their groups were not built from, without it (or with None) on the
    rows T was estimated from. ``predictions``: θ*'s outputs (rows × tasks, ``affinity.agreement``), the
    candidates' source with ``grouping.candidates_from: outputs``; ``retrained``: returns the predictions of base
    models retrained from other seeds (``agreement.retrained_predictions``), called only when the agreement's groups
    are chosen, for their stability; ``fold_predictions``: returns θ*'s predictions retrained without each check
    fold (``agreement.fold_predictions``), called with ``grouping.agreement_crossfit`` to score the agreement's
    groupings on rows whose labels did not make them (``agreement_fold_scores``): every candidate of the agreement
    (``all``) or the chosen one in its random control (``control``)."""
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
            return agreement_candidates(predictions, retrained, spec)
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
    agreement_check: dict[str, Any] | None = None
    over_alone: dict[str, Any] | None = None
    spreads: dict[Any, float | None] = {}  # each candidate's seed spread (``seed_spread``)
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
        elif spec.agreement_crossfit == "all" and fold_predictions is not None and \
                any(source_of(kk, first, n) == "outputs" for kk in groupings):
            scores, agreement_check = agreement_fold_scores(data, tensors, manifest, partitions, groupings, first,
                                                            fold_predictions(), progress, backend)
        else:
            scores = check_groupings(data, tensors, manifest, partitions, progress, backend)
        predicted = {k: s.task_loss() for k, s in scores.items()}
        spreads = {k: seed_spread(scores[k], scores[1]) for k in groupings}
        reference = float(predicted[1].sum())
        for k, g in groupings.items():
            total = float(predicted[k].sum())
            candidates.append({"k": size_of(k), "source": source_of(k, first, n),
                               "sizes": sorted((len(m) for m in g.groups), reverse=True),
                               "groups": [[data.task_names[i] for i in m] for m in g.groups],
                               "predicted_val_loss": total, "predicted_gain": (reference - total) / reference,
                               "fold_gains": fold_gains(scores[k], scores[1]),
                               "seed_sd": spreads[k],
                               "from_criterion": k == criterion_k})
        outputs = {kk for kk in groupings if source_of(kk, first, n) == "outputs"}
        k = choose(scores, groupings, spec, outputs=outputs)
        over_alone = split_over_alone(scores, groupings, spec, k, n)
        honest = selection_gain(scores, groupings, spec, outputs)
        gain = honest["gain"] if k != 1 else 0.0
        free = 1 in groupings  # k may be overruled (a fixed k or range without 1 is the user's: reported only)
        if free and k != 1 and not honest["holds"]:
            # choosing this way does not gain on folds the choice was not made on: the split's gain where it
            # was chosen is those folds' luck. As after the random control: one model per task if that pays (it is
            # no choice of which tasks go together), else one model for all
            honest["instead_of"] = size_of(k)
            k = without_split(scores, groupings, spec, n, k)
            gain = (reference - scores[k].total()) / reference
        if spec.random_control and crossfit is None and 1 < size_of(k) < n:
            parts = random_partitions([list(m) for m in groupings[k].groups], n, spec.random_control, spec.seed)
            drawn = check_groupings(data, tensors, manifest, dict(enumerate(parts)), progress, backend,
                                    label=CONTROL_STAGE)
            chosen = scores[k]
            if spec.agreement_crossfit == "control" and fold_predictions is not None and \
                    source_of(k, first, n) == "outputs":
                # the split against random partitions on folds whose labels did not make its groups
                fitted, agreement_check = agreement_fold_scores(data, tensors, manifest, {k: partitions[k]},
                                                                {k: groupings[k]}, first, fold_predictions(), progress,
                                                                backend, label=CONTROL_STAGE)
                chosen = fitted[k]
            control = random_control(chosen, scores[1], list(drawn.values()), spec)
            if free and not control["passed"]:
                # the split's gain is its sizes', not its tasks': one model per task if that pays, else together
                control["instead_of"] = size_of(k)
                k = without_split(scores, groupings, spec, n, k)
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
    if any(check is not None and "instead_of" in check for check in (control, honest)):  # overruled: k's own spread
        per_fold = fold_gains(scores[k], scores[1]) if k != 1 else []
        spread = (min(per_fold), max(per_fold)) if per_fold else None
    elif honest is not None:
        per_fold = [f["gain"] for f in honest["folds"]]
        spread = (min(per_fold), max(per_fold))
    splits = [c for c in candidates if c["k"] != 1 and "fold_gains" in c]
    best_split = min(splits, key=lambda c: c["predicted_val_loss"]) if splits else None
    unheld = honest["gain"] if honest is not None and "instead_of" in honest else None
    if over_alone is not None and k != n:  # overruled later (the choice's selection check): not the reason
        over_alone = None
    alone = next((c for c in splits if c["k"] == n), None)
    noise = spreads.get(k)
    recommendation, text = verdict(size_of(k), n, gain, reliability, stable, in_sample, spread, best_split, control, unheld,
                                   source=chosen_from, over_alone=over_alone, alone=alone,
                                   unheld_of=honest.get("instead_of") if honest is not None else None, seed_sd=noise)
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
        "training_noise": None if noise is None else {
            "seeds": spec.check_seeds, "gain_sd": noise,
            "description": "how far one training of the recommended grouping strays from seed to seed: the standard "
                           "deviation over the check's seeds of its loss on a fold, relative to one model for all's "
                           "(pooled over the folds); the predicted gain is the mean over the seeds"},
        "split_over_alone": over_alone,
        "agreement_check": agreement_check,
        "min_gain": spec.min_gain, "min_gain_alone": spec.min_gain_alone,
        "min_gain_alone_se": spec.alone_se(),
        "split_vs_alone_se": spec.split_vs_alone_se, "selection_min_gain": spec.selection_min_gain,
        "tolerance": spec.tolerance,
        "seconds": time.perf_counter() - t0,
        "description": ("predicted_val_loss: summed validation loss of one model per group trained from scratch on "
                        "the training rows; predicted_gain: its reduction relative to one model for all tasks"),
    }
    return grouping, record


def agreement_fold_scores(data: SplitTable, tensors: TensorData, manifest: Manifest, partitions: dict[Any, Any],
                          groupings: dict[Any, Any], first: str, per_fold: list[np.ndarray],
                          progress: Progress | None = None, backend: Backend | None = None,
                          label: str = CHECK_STAGE) -> tuple[dict[Any, Any], dict[str, Any]]:
    """The check's fold scores of every candidate, the output agreement's scored fold by fold with the groups of θ*
    retrained without that fold (``per_fold``: its predictions, one array per fold, ``agreement.fold_predictions``):
    fold f's labels neither trained the models that score it nor chose who shares a model. The other candidates'
    scores are the plain check's. Returns the scores and a record: per k, the mean ARI between a fold's groups and
    the groups of θ* trained on every row (the ones recommended)."""
    from solver.grouping import labels_from_groups

    spec, n = manifest.grouping, data.n_tasks
    outputs = [kk for kk in groupings if source_of(kk, first, n) == "outputs"]
    per_key: dict[Any, list[list[int]]] = {kk: v for kk, v in partitions.items() if kk not in outputs}
    folds: dict[Any, list[int]] = {}
    ari: dict[str, list[float]] = {}
    for f, P in enumerate(per_fold):
        R = agreement.correlation(P)
        for kk in outputs:
            made = cluster_at(R, size_of(kk), spec)
            per_key[("fold", kk, f)] = [list(m) for m in made.groups]
            folds[("fold", kk, f)] = [f]
            ari.setdefault(str(size_of(kk)), []).append(
                float(adjusted_rand_score(groupings[kk].labels, labels_from_groups(made.groups, n))))
    scored = check_groupings(data, tensors, manifest, per_key, progress, backend, folds, label)
    out = {kk: v for kk, v in scored.items() if not (isinstance(kk, tuple) and kk[0] == "fold")}
    for kk in outputs:
        parts = [scored[("fold", kk, f)] for f in range(len(per_fold))]
        seeds = None if parts[0].by_seed is None else np.stack([p.by_seed[:, f] for f, p in enumerate(parts)], axis=1)
        out[kk] = FoldScores(np.stack([p.loss[f] for f, p in enumerate(parts)]),
                             np.stack([p.rows[f] for f, p in enumerate(parts)]), seeds)
    record = {"mode": spec.agreement_crossfit, "folds": len(per_fold),
              "fold_ari": {k: float(np.mean(v)) for k, v in ari.items()},
              "description": "the output agreement's groupings scored on each fold with the groups of the base model "
                             "retrained without that fold (mode control: the chosen split's, against random "
                             "partitions; all: every candidate's); fold_ari: mean ARI between those groups and the "
                             "recommended ones at k"}
    return out, record


__all__ = ["add_source", "advise", "agreement_fold_scores", "candidate_groupings", "candidate_ks",
           "candidate_sources", "groups_at", "source_of"]
