"""Choosing the number of groups k.

⟨T, X⟩ itself is not comparable across k (tr X = k changes the feasible set; splitting a group
never lowers the average-density objective by much). The criterion used instead scores each
candidate's rounded partition by its centered within-group affinity (modularity with a
constant null model):

    Q(P) = Σ_G Σ_{i≠j ∈ G} (T_ij − m) / Σ_{i≠j} |T_ij − m|,   m = mean off-diagonal entry of T.

Merging two groups whose cross affinity is below the average lowers Q, and splitting a group
whose internal affinity is above the average lowers Q too, so Q peaks at the planted k on block
matrices. The k with the largest Q is chosen (the smallest such k on ties). Invariant to adding
a constant to T and to positive scaling; the diagonal does not enter.

Q has modularity's resolution limit: merging two groups whose cross affinity is near the mean
changes Q by almost nothing, so with many small groups it hardly tells k apart (planted n = 1000
in 100 groups of 10: a 77-group partition scores higher than the planted one;
`benchmarks/k_selection.py`). So Q's choice is followed by a merge check (``undo_merges``):
each group is bisected by 2-means on the rows of its centered block, and a group whose
halves are no more related than average (cross affinity below MERGE_RATIO of their internal
one) counts as groups merged, as many as repeated bisection of its halves finds; with m such
groups holding p parts, k + p − m is solved and kept if it misses fewer groups by the same
count.

Each candidate's record also carries its centered density
D(P) = Σ_G (1/|G|) Σ_{i≠j ∈ G} (T_ij − m) / s, s = Σ_{i≠j} |T_ij − m| / n (the average-
density objective above the mean), which a merge lowers by about one group's share D/k: a D
that keeps rising past the chosen k says groups were merged. D is not the criterion: noise makes
splits pay under D (planted n = 200 in 10 groups, noise 0.3: D preferred 25–30 groups, and a
rule moving from Q's choice to a larger k when D rose by more than 0.8 of a group's share still
chose 30 there; diagnostic runs of session 4).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from sklearn.cluster import KMeans

from .validation import candidate_ks

CRITERION = {
    "name": "centered_within_group_affinity",
    "description": "Q = sum over groups of sum_{i != j in G} (T_ij - m) / sum_{i != j} |T_ij - m|, "
                   "m = mean off-diagonal T; the k whose rounded partition maximizes Q "
                   "(smallest k on ties).",
}


def _centered(T: np.ndarray) -> np.ndarray:
    """T − m off the diagonal (m = mean off-diagonal entry), 0 on it."""
    off = ~np.eye(T.shape[0], dtype=bool)
    return np.where(off, T - T[off].mean(), 0.0)


def centered_score(T: np.ndarray, labels: np.ndarray) -> float:
    """Q(P) of the module docstring for the partition given by ``labels``."""
    C = _centered(T)
    denom = np.abs(C).sum()
    same = labels[:, None] == labels[None, :]
    return float(C[same].sum() / denom) if denom > 0 else 0.0


def centered_density(T: np.ndarray, labels: np.ndarray) -> float:
    """D(P) of the module docstring for the partition given by ``labels`` (recorded, not the criterion)."""
    C = _centered(T)
    scale = np.abs(C).sum() / T.shape[0]
    if scale <= 0:
        return 0.0
    labels = np.asarray(labels)
    groups = (np.flatnonzero(labels == g) for g in np.unique(labels))
    return float(sum(C[np.ix_(idx, idx)].sum() / len(idx) for idx in groups) / scale)


def select_k(T: np.ndarray, ks: list[int], solve: Callable[[int], Any]) -> tuple[Any, dict[str, Any]]:
    """Run ``solve(k)`` (returning a Grouping) for each candidate k; return the Grouping with the
    best score and the k_selection record {"criterion", "candidates", "chosen"}."""
    candidates, best, best_score = [], None, -np.inf
    for k in ks:
        grouping = solve(k)
        score = centered_score(T, grouping.labels)
        candidates.append({"k": k, "score": score, "density": centered_density(T, grouping.labels),
                           "objective": grouping.objective,
                           "relaxation_objective": grouping.relaxation_objective,
                           "seconds": grouping.seconds})
        if score > best_score + 1e-12:
            best, best_score = grouping, score
    return best, {"criterion": dict(CRITERION), "candidates": candidates, "chosen": best.k}


def select_k_screened(T: np.ndarray, ks: list[int], screen: Callable[[int], np.ndarray],
                      solve: Callable[[int], Any], keep: int, refine: int = 3) -> tuple[Any, dict[str, Any]]:
    """Like select_k, but every candidate is first scored on a cheap partition (``screen(k)``:
    labels) and only the ``keep`` best by that score are solved; among those the solved
    partitions' scores decide. A geometric grid of candidates can miss the true k (2..500 in 40
    steps jumps from 91 to 105), so the screen zooms in: up to ``refine`` times, every k
    between the best screened candidate's grid neighbours is screened too (a finer geometric grid
    if there are more than 40). Candidates record "screen_score" for all and "score" (None if not
    kept) for the solved ones."""
    scores = {k: centered_score(T, screen(k)) for k in ks}
    added: list[int] = []
    for _ in range(refine):
        grid = sorted(scores)
        best = max(grid, key=lambda k: (scores[k], -k))
        i = grid.index(best)
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        new = [k for k in candidate_ks(lo, hi) if k not in scores]
        if not new:
            break
        scores.update({k: centered_score(T, screen(k)) for k in new})
        added += new
    screened = sorted(scores.items())
    kept = sorted(k for k, _ in sorted(screened, key=lambda ks_: (-ks_[1], ks_[0]))[:keep])
    best, record = select_k(T, kept, solve)
    solved = {c["k"]: c for c in record["candidates"]}
    record["candidates"] = [
        {"k": k, "screen_score": s, **({key: v for key, v in solved[k].items() if key != "k"} if k in solved
                                        else {"score": None})}
        for k, s in screened
    ]
    record["screened"] = {"kept": kept, "refined": sorted(added),
                          "description": "candidates scored on a cheap partition first, the grid refined "
                                         f"around the best; the {keep} best solved"}
    return best, record


# A group whose best bisection leaves the halves' cross affinity (above the mean) below this share
# of their internal affinity reads as two groups merged. On planted matrices true groups gave
# 0.61–0.9 (noise 0.1–0.3, groups of 10–20), merged pairs −0.14–0.06 (diagnostic runs, session 4).
MERGE_RATIO = 0.5


def _bisect(C: np.ndarray, idx: np.ndarray) -> dict[str, Any] | None:
    """Bisect the tasks ``idx`` by 2-means on the rows of their block of the centered matrix C
    (with the mean direction projected out): each task's affinity profile within the block. Tasks
    of one planted group have nearly the same profile, so a cut keeps such groups whole however
    many the block holds (the sign of the leading eigenvector does too for two, but with more the
    top eigenvalues are nearly equal and the eigenvector is an arbitrary mix that can cut through
    a group). None below 4 tasks or when a half has fewer than 2."""
    if len(idx) < 4:
        return None
    S = C[np.ix_(idx, idx)]
    S = S - S.mean(axis=0, keepdims=True)
    S = S - S.mean(axis=1, keepdims=True)
    side = KMeans(n_clusters=2, n_init=4, random_state=0).fit(S).labels_ == 1
    a, b = idx[side], idx[~side]
    if len(a) < 2 or len(b) < 2:
        return None
    inside = (C[np.ix_(a, a)].sum() / (len(a) * (len(a) - 1))
              + C[np.ix_(b, b)].sum() / (len(b) * (len(b) - 1))) / 2
    across = float(C[np.ix_(a, b)].mean())
    return {"a": a, "b": b, "inside": float(inside), "across": across,
            "merged": bool(inside > 0 and across < MERGE_RATIO * inside)}


def _parts(C: np.ndarray, idx: np.ndarray) -> int:
    """How many groups the tasks ``idx`` hold, by repeated bisection: one if neither their bisection
    nor any below it reads as merged, else the parts of the two halves. (A block of many groups
    can read as one at the top: each half's internal mean is then mostly pairs from different
    groups; its halves' halves still show them.) Pieces below 6 tasks are not bisected further:
    halves of 2 give a one-entry internal mean, too noisy to judge."""
    cut = _bisect(C, idx) if len(idx) >= 6 else None
    if cut is None:
        return 1
    a, b = _parts(C, cut["a"]), _parts(C, cut["b"])
    return a + b if cut["merged"] or a > 1 or b > 1 else 1


def merged_groups(T: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
    """Groups of the partition that look like groups merged.

    Each group of at least 4 tasks is bisected (``_bisect``); it reads as merged when the halves'
    mean cross entry of T − m (m = mean off-diagonal entry) is below MERGE_RATIO × their mean
    internal one (and that is positive): tasks that were put together although their affinity is
    no more than average. ``parts``: how many groups it holds when its halves are bisected again
    in turn (a group can be several merged, when the chosen k is far below the true one)."""
    C = _centered(T)
    labels = np.asarray(labels)
    out = []
    for g in np.unique(labels):
        idx = np.flatnonzero(labels == g)
        cut = _bisect(C, idx)
        if cut is not None and cut["merged"]:
            out.append({"group": int(g), "size": len(idx), "inside": cut["inside"], "across": cut["across"],
                        "parts": _parts(C, cut["a"]) + _parts(C, cut["b"])})
    return out


def undo_merges(T: np.ndarray, best: Any, solve: Callable[[int], Any], k_max: int, rounds: int = 3
                ) -> tuple[Any, list[dict[str, Any]]]:
    """Q's resolution limit (module docstring) shows as groups that are groups merged: while the
    chosen partition has such groups, holding p parts in all, the partition misses p − (their
    number) groups; solve k + that and keep it if it misses fewer, or if it shows more groups in
    all (its k + missing above the chosen one's) (at most ``rounds`` times, never above k_max). Returns the grouping and a record of each round."""
    def missing(merged: list[dict[str, Any]]) -> int:
        return sum(m["parts"] - 1 for m in merged)

    record = []
    merged = merged_groups(T, best.labels)
    for _ in range(rounds):
        target = min(best.k + missing(merged), k_max)
        if not merged or target <= best.k:
            break
        trial = solve(target)
        trial_merged = merged_groups(T, trial.labels)
        # Kept when it misses fewer groups, or when it shows more groups in all (k + missing) than
        # the chosen partition did: that partition's count was short (its large groups hold many
        # groups that one bisection cannot tell apart), so the trial's k is the closer one
        # (planted n = 300 in 60 groups, noise 0.3: k = 4 read as 28 groups, the trial at 28 as 53).
        kept = (missing(trial_merged) < missing(merged)
                or trial.k + missing(trial_merged) > best.k + missing(merged))
        record.append({"k": best.k, "merged_groups": len(merged), "missing": missing(merged), "tried_k": trial.k,
                       "merged_groups_after": len(trial_merged), "missing_after": missing(trial_merged),
                       "kept": kept})
        if not kept:
            break
        best, merged = trial, trial_merged
    return best, record

