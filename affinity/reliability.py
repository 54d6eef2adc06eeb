"""How sure the advice is, and the plain sentence that says it.

The split-half correlation of T's pair-specific part (T from the even and from the odd sampled subsets, task
effects removed by double centering, Pearson over pairs, and its Spearman–Brown value for all subsets); the
stability of the chosen groups (adjusted Rand index between them and the groups of T recomputed on bootstrap
resamples of the subsets, same k; for the output agreement's groups, the agreement's groups at the same k of
base models retrained from other seeds); and ``verdict``, which sums the choice and these up in one sentence.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import adjusted_rand_score

from affinity import agreement
from affinity.affinities import pairwise_affinity
from affinity.choice import standard_error
from affinity.estimators.base import AffinityEstimate
from affinity.manifest import GroupingSpec

STABLE_ARI = 0.8  # mean resampling ARI from which groups are called stable
RELIABLE_SPLIT_HALF = 0.3  # split-half correlation of T (Spearman–Brown) from which T is called informative
BOOTSTRAPS = 5
NOISY_SEED = 0.01  # spread of one training's loss over seeds (share of one model for all's) the verdict mentions


def cluster_at(T: np.ndarray, k: Any, spec: GroupingSpec):
    """The grouping of the solver at k (or a [lo, hi] range) of the affinity-like matrix ``T``, with the spec's
    method and seed: how the advice's candidates are made, and so how their stability is re-made."""
    from solver import cluster  # imported when needed: the solver brings cvxpy (seconds of import)

    return cluster(T, k, method=spec.method, seed=spec.seed)


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
            source: str | None = None, over_alone: dict[str, Any] | None = None,
            alone: dict[str, Any] | None = None, unheld_of: int | None = None,
            seed_sd: float | None = None) -> tuple[str, str]:
    """(recommendation, one plain sentence) for the chosen k.

    "no reliable structure" when the answer is one of the two trivial groupings (no split predicted to
    pay reliably: k = 1; or each task alone: k = n; ``unheld``: the cross-validated gain of the choice of a
    split that was therefore overruled, for one model per task if that pays, else one model for all
    (``unheld_of``: the overruled choice's number of groups); ``over_alone``: the best split, no better than one
    model per task), when the chosen groups are not stable under resampling of the subsets (mean ARI below
    STABLE_ARI), and whenever the affinity's pair-specific
    part does not replicate across halves of the subsets (then which tasks go together is noise). Groups of
    the output agreement (``source`` "outputs") are judged by ``stable`` alone: the base model retrained from
    other seeds (T's reliability says nothing about them). ``alone``: the candidate one model per task (its
    ``predicted_gain`` and ``fold_gains``); where the answer is one model for all, the sentence says what it was
    predicted to gain and its standard error over the folds, so that a user reads when the rows could not tell the
    two apart. ``seed_sd``: how far one training of the chosen split strays from seed to seed (``choice.seed_spread``),
    said where it reaches NOISY_SEED: the predicted gain is a mean over trainings; a user who trains once gets one."""
    outputs = source == "outputs"
    informative = outputs or reliability is None or (reliability.get("spearman_brown") or 0.0) >= RELIABLE_SPLIT_HALF
    gain_text = f"predicted gain over one model for all {gain:+.1%}" if gain is not None else \
        "no predicted loss (grouping.selection: affinity)"
    if gain is not None and fold_range is not None:
        gain_text += f" (per fold {fold_range[0]:+.1%} to {fold_range[1]:+.1%})"
    if gain is not None and in_sample is not None and abs(in_sample - gain) > 0.02:
        # the two readings disagree: say both, the user decides how much to trust the split
        gain_text += f" ({in_sample:+.1%} over all folds, where it was chosen)"
    if gain is not None and k != 1 and seed_sd is not None and seed_sd >= NOISY_SEED:
        gain_text += f", ± {seed_sd:.1%} on a check fold from one training seed to another"
    sizes_only = ""
    if control is not None and "instead_of" in control:
        # the best split did not beat random partitions of its sizes: what it gains is not about the tasks
        sizes_only = (f"; the best split ({control['instead_of']} groups) is predicted no better than random "
                      f"partitions of its group sizes ({control['gain_over_random']:+.1%} ± "
                      f"{control['se']:.1%} over them)")
    if k == 1:
        text = "no reliable structure: train these tasks together (one model for all)"
        alone_text = ""
        if alone is not None and len(alone["fold_gains"]) > 1:
            # training each task on its own claims nothing about which tasks go together; how close it came, and
            # how little the folds can tell, is the user's to weigh (one model per task costs n models)
            alone_text = (f"; one model per task is predicted {alone['predicted_gain']:+.1%} ± "
                          f"{standard_error(alone['fold_gains']):.1%}")
        if sizes_only:
            return "together", text + sizes_only + alone_text
        if best_split is not None:
            # what the best split would have bought, and how much the folds disagree: the reason for "together"
            lo, hi = min(best_split["fold_gains"]), max(best_split["fold_gains"])
            what = f"the best split ({best_split['k']} groups)"
            if best_split["k"] == n:
                what, alone_text = "one model per task", ""
            text += f"; {what} is predicted {best_split['predicted_gain']:+.1%} (per fold {lo:+.1%} to {hi:+.1%})"
        if unheld is not None:
            what = "this way (here: one model per task)" if unheld_of == n else "a split this way"
            text += f", but choosing {what} gains {unheld:+.1%} on folds the choice was not made on"
        return "together", text + alone_text
    if k == n:
        if unheld is not None:
            # the split chosen first gained only on the folds it was chosen on
            sizes_only += f"; choosing a split gains {unheld:+.1%} on folds the choice was not made on"
        if over_alone is not None:
            # the best split gained over one model for all about as much as training each task alone does
            sizes_only += (f"; the best split ({over_alone['instead_of']} groups) is predicted no better than one "
                           f"model per task ({over_alone['gain_over_alone']:+.1%} ± {over_alone['se']:.1%} over it)")
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


__all__ = ["BOOTSTRAPS", "NOISY_SEED", "RELIABLE_SPLIT_HALF", "STABLE_ARI", "agreement_stability", "cluster_at",
           "pair_specific", "split_half", "stability", "verdict"]
