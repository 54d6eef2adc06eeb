"""Choosing k: `k: auto` on planted block matrices, and how sharp the criterion is.

For each (n, true k): T = the planted block matrix of benchmarks/grouping_solver.py (0.8 within
groups of equal size, 0.2 across, + sigma·N(0, 1), symmetrized). Runs solver.cluster(T, "auto",
method) and prints the chosen k, seconds, ARI against the planted groups, and the centered score
Q (solver/choose_k.py) of the chosen partition and of the planted one: when the two scores are
within a hair of each other at a very different k, the criterion cannot tell them apart (its
resolution limit), whatever the solver does.

    python benchmarks/k_selection.py [--cases 400:40 1000:20 1000:100] [--sigma 0.1] [--method lowrank]
"""

from __future__ import annotations

import argparse
import time

import torch
from sklearn.metrics import adjusted_rand_score

from grouping_solver import planted
from solver import cluster
from solver.choose_k import centered_score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["400:40", "1000:20", "1000:100"],
                        help="n:k pairs (k planted groups of n/k tasks)")
    parser.add_argument("--sigma", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="lowrank")
    args = parser.parse_args()
    print(f"# torch threads {torch.get_num_threads()}, sigma={args.sigma}, seed={args.seed}, method={args.method}")
    print("| n | planted k | chosen k | seconds | ARI | Q(chosen) | Q(planted) | candidates screened | solved |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case in args.cases:
        n, k = (int(v) for v in case.split(":"))
        T, truth = planted(n, k, args.sigma, args.seed)
        start = time.perf_counter()
        g = cluster(T, "auto", method=args.method, seed=args.seed)
        seconds = time.perf_counter() - start
        record = g.k_selection or {}
        solved = [c["k"] for c in record.get("candidates", []) if c.get("score") is not None]
        print(f"| {n} | {k} | {g.k} | {seconds:.1f} | {adjusted_rand_score(truth, g.labels):.3f} | "
              f"{centered_score(T, g.labels):.5f} | {centered_score(T, truth):.5f} | "
              f"{len(record.get('candidates', []))} | {solved} |", flush=True)


if __name__ == "__main__":
    main()
