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
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .validation import candidate_ks

CRITERION = {
    "name": "centered_within_group_affinity",
    "description": "Q = sum over groups of sum_{i != j in G} (T_ij - m) / sum_{i != j} |T_ij - m|, "
                   "m = mean off-diagonal T; the k whose rounded partition maximizes Q "
                   "(smallest k on ties).",
}


def centered_score(T: np.ndarray, labels: np.ndarray) -> float:
    """Q(P) of the module docstring for the partition given by ``labels``."""
    n = T.shape[0]
    off = ~np.eye(n, dtype=bool)
    C = np.where(off, T - T[off].mean(), 0.0)
    denom = np.abs(C).sum()
    same = labels[:, None] == labels[None, :]
    return float(C[same].sum() / denom) if denom > 0 else 0.0


def select_k(T: np.ndarray, ks: list[int], solve: Callable[[int], Any]) -> tuple[Any, dict[str, Any]]:
    """Run ``solve(k)`` (returning a Grouping) for each candidate k; return the Grouping with the
    best score and the k_selection record {"criterion", "candidates", "chosen"}."""
    candidates, best, best_score = [], None, -np.inf
    for k in ks:
        grouping = solve(k)
        score = centered_score(T, grouping.labels)
        candidates.append({"k": k, "score": score, "objective": grouping.objective,
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
    steps jumps from 87 to 100 to 115), so the screen zooms in: up to ``refine`` times, every k
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
