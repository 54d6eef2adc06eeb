"""Seeded sampling of task subsets and their pair coverage."""

from __future__ import annotations

import numpy as np


class CoverageError(ValueError):
    pass


def sample_subsets(n_tasks: int, size: int, count: int, seed: int, balanced: bool = True,
                   exclude: set[tuple[int, ...]] | None = None) -> list[tuple[int, ...]]:
    """``count`` distinct subsets of ``size`` tasks (sorted tuples).

    ``balanced`` (default) builds each subset greedily from the least-covered pair, adding the
    task with the fewest co-occurrences with the members so far (random tie-breaks), so that
    every pair is covered about equally often; otherwise subsets are uniform at random.
    ``exclude`` names subsets not to return (e.g. the ones a model was fitted on).
    """
    if not 2 <= size <= n_tasks:
        raise ValueError(f"estimation.subset_size={size} must be between 2 and the number of tasks ({n_tasks})")
    rng = np.random.default_rng(seed)
    pair = np.zeros((n_tasks, n_tasks))
    single = np.zeros(n_tasks)
    seen: set[tuple[int, ...]] = set(exclude or ())
    out: list[tuple[int, ...]] = []
    attempts = 0
    from math import comb

    possible = comb(n_tasks, size) - len(exclude or ())
    count = min(count, possible)
    while len(out) < count:
        attempts += 1
        if balanced and attempts <= 20 * count:
            jitter = pair + rng.random((n_tasks, n_tasks)) * 1e-3
            np.fill_diagonal(jitter, np.inf)
            a, b = np.unravel_index(int(np.argmin(jitter)), jitter.shape)
            members = [int(a), int(b)]
            score = pair[a] + pair[b]
            for _ in range(size - 2):
                cand = score + 1e-3 * single + rng.random(n_tasks) * 1e-6
                cand[members] = np.inf
                nxt = int(np.argmin(cand))
                members.append(nxt)
                score += pair[nxt]
            s = tuple(sorted(members))
            if s in seen:  # fall back to a random subset to avoid repeating
                s = tuple(sorted(rng.choice(n_tasks, size, replace=False).tolist()))
        else:
            s = tuple(sorted(rng.choice(n_tasks, size, replace=False).tolist()))
        if s in seen:
            continue
        seen.add(s)
        out.append(s)
        idx = np.array(s)
        pair[np.ix_(idx, idx)] += 1
        single[idx] += 1
    return out


def pair_counts(subsets: list[tuple[int, ...]], n_tasks: int) -> np.ndarray:
    """C[i, j] = number of subsets containing both i and j (diagonal: containing i)."""
    C = np.zeros((n_tasks, n_tasks), dtype=np.int64)
    for s in subsets:
        idx = np.array(s)
        C[np.ix_(idx, idx)] += 1
    return C


def check_coverage(counts: np.ndarray, min_count: int, names: list[str], size: int) -> None:
    """Refuse when a pair of tasks is covered by fewer than ``min_count`` subsets."""
    if min_count <= 0:
        return
    n = counts.shape[0]
    off = counts + np.eye(n, dtype=counts.dtype) * 10**9
    worst = np.unravel_index(np.argmin(off), off.shape)
    if off[worst] < min_count:
        pairs = n * (n - 1) // 2
        needed = int(np.ceil(min_count * pairs / (size * (size - 1) / 2)))
        uncovered = int(((off < min_count).sum()) // 2)
        raise CoverageError(
            f"{uncovered} task pairs (e.g. {names[worst[0]]!r}, {names[worst[1]]!r}) are covered by fewer than "
            f"estimation.min_pair_count={min_count} subsets; raise estimation.num_subsets to at least {needed} "
            f"(or the subset_size)"
        )
