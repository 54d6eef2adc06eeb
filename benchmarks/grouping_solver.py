"""Benchmark of solver.cluster on planted block matrices: sdp (SCS) vs lowrank vs auto vs spectral.

T = 0.8 within groups, 0.2 across, plus sigma·N(0,1) noise, symmetrized; k = n/10. Group sizes
(--groups, each kind reported in its own rows):
  equal     n/k tasks per group;
  random    each task's group drawn uniformly from k (sizes ~ Binomial(n, 1/k): 1 to ~20 at k = n/10);
  powerlaw  group i of size ∝ 1/(i+1) (Zipf), at least 1 task (n = 2000: 1 to ~340 tasks).
With --random: T uniform on [0, 1), symmetrized (no group structure; ARI is meaningless there),
to measure how far lowrank's relaxation stays below the exact SDP's.
SCS runs are cut at --scs-time-limit seconds of solver time (reported as "> limit"); "× faster" is
seconds ÷ the faster of SCS and lowrank in the same run (an SCS run cut at the limit counts as
taking the limit, so "time / SCS" is then an upper bound, "< x").
Usage: python benchmarks/grouping_solver.py [--sizes 50 100 200 400 800 2000] [--sigma 0.1]
       [--seed 0] [--groups equal random powerlaw] [--methods sdp lowrank auto spectral]
       [--scs-time-limit 600] [--random]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from solver import SolverError, cluster, partition_objective

SCS_MAX_N = 800  # SCS at n=1600 took 285 s and 6.5 GB
GROUPS = ("equal", "random", "powerlaw")


def group_labels(n: int, k: int, groups: str, rng: np.random.Generator) -> np.ndarray:
    """Planted labels with the size distribution ``groups`` (module docstring)."""
    if groups == "equal":
        return np.arange(n) * k // n
    if groups == "random":
        return rng.integers(k, size=n)
    if groups == "powerlaw":
        share = 1.0 / np.arange(1, k + 1)
        sizes = 1 + np.floor((n - k) * share / share.sum()).astype(int)
        sizes[: n - sizes.sum()] += 1  # the remainder to the largest groups
        return rng.permutation(np.repeat(np.arange(k), sizes))
    raise ValueError(f"groups must be one of {GROUPS}; got {groups!r}.")


def planted(n: int, k: int, sigma: float, seed: int, groups: str = "equal") -> tuple[np.ndarray, np.ndarray]:
    """Planted block matrix (0.8 inside groups, 0.2 across) with Gaussian noise; groups sized by
    ``groups``."""
    rng = np.random.default_rng(seed)
    labels = group_labels(n, k, groups, rng)
    T = np.where(labels[:, None] == labels[None, :], 0.8, 0.2) + sigma * rng.standard_normal((n, n))
    return (T + T.T) / 2, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200, 400, 800, 2000])
    parser.add_argument("--sigma", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=GROUPS)
    parser.add_argument("--methods", nargs="+", default=["sdp", "lowrank", "auto", "spectral"],
                        help="subset of sdp lowrank auto spectral")
    parser.add_argument("--scs-time-limit", type=float, default=600.0,
                        help="seconds of SCS solver time before an sdp run is cut (cvxpy's compilation comes on top)")
    parser.add_argument("--random", action="store_true", help="uniform random T instead of planted blocks")
    args = parser.parse_args()
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}, sigma={args.sigma}, seed={args.seed}")
    print("| n | k | groups | method | seconds | relaxation obj | rounded obj | ARI | time / SCS "
          "| × faster | relax. rel. diff vs SCS |")
    print("|" + "---|" * 11)
    for groups in (["uniform random T"] if args.random else args.groups):
        for n in args.sizes:
            k = max(2, n // 10)
            if args.random:
                R = np.random.default_rng(args.seed).random((n, n))
                T, truth = (R + R.T) / 2, np.zeros(n, dtype=int)
            else:
                T, truth = planted(n, k, args.sigma, args.seed, groups)
            rows, secs_of = [], {}
            for method in args.methods:
                row = {"method": "sdp (SCS)" if method == "sdp" else method}
                if method == "sdp" and n > SCS_MAX_N:
                    row["seconds"] = "skipped (n too large)"
                    rows.append(row)
                    continue
                options = {"time_limit": args.scs_time_limit} if method == "sdp" else None
                start = time.perf_counter()
                try:
                    g = cluster(T, k, method=method, seed=args.seed, sdp_options=options)
                except SolverError:
                    secs_of[method] = max(args.scs_time_limit, time.perf_counter() - start)
                    row["seconds"] = f"> {args.scs_time_limit:g} (cut)"
                    rows.append(row)
                    continue
                secs = time.perf_counter() - start
                secs_of[method] = secs
                if method == "auto":
                    cut = " after SCS's cut" if "auto_fallback" in (g.certificate or {}) else ""
                    row["method"] = f"auto → {g.method}{cut}"
                row.update(seconds=f"{secs:.2f}", secs=secs, g=g,
                           ari=f"{adjusted_rand_score(truth, g.labels):.3f}")
                rows.append(row)
            if not args.random:  # the planted partition's own objective, for comparison
                print(f"| {n} | {k} | {groups} | planted partition | | | "
                      f"{partition_objective(T, truth):.4f} | 1.000 | | | |")
            ref = next((r["g"] for r in rows if r["method"] == "sdp (SCS)" and "g" in r), None)
            faster = min([secs_of[m] for m in ("sdp", "lowrank") if m in secs_of], default=None)
            for row in rows:
                g = row.get("g")
                relax = rounded = ratio = times_faster = diff = ""
                if g is not None:
                    relax = "" if g.relaxation_objective is None else f"{g.relaxation_objective:.4f}"
                    rounded = f"{g.objective:.4f}"
                    if "sdp" in secs_of and row["method"] != "sdp (SCS)":
                        # an SCS run cut at the limit took longer than secs_of["sdp"]: an upper bound
                        ratio = f"{'' if ref is not None else '< '}{row['secs'] / secs_of['sdp']:.3f}"
                    if faster is not None:
                        times_faster = f"{row['secs'] / faster:.2f}"
                    if ref is not None and g is not ref and g.relaxation_objective is not None:
                        diff = (f"{(g.relaxation_objective - ref.relaxation_objective) / abs(ref.relaxation_objective):+.2e}")
                print(f"| {n} | {k} | {groups} | {row['method']} | {row['seconds']} | {relax} | {rounded} "
                      f"| {row.get('ari', '')} | {ratio} | {times_faster} | {diff} |", flush=True)


if __name__ == "__main__":
    main()
