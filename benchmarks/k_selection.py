"""Choosing k: `k: auto` on planted block matrices, and how sharp the criterion is.

For each (n, true k): T = the planted block matrix of benchmarks/grouping_solver.py (0.8 within
groups of equal size, 0.2 across, + sigma·N(0, 1), symmetrized). Runs solver.cluster(T, "auto",
method) and prints the chosen k, seconds, ARI against the planted groups, and for the chosen
and the planted partitions the criterion D (centered density) and the modularity Q that was the
criterion before (solver/choose_k.py): when a partition at a very different k scores as well as
the planted one, the score cannot tell them apart (Q's resolution limit), whatever the solver
does.

    python benchmarks/k_selection.py [--cases 400:40 1000:20 1000:100] [--sigma 0.1] [--method lowrank]
"""

from __future__ import annotations

import argparse
import time

import torch
from sklearn.metrics import adjusted_rand_score

from grouping_solver import planted
from solver import cluster
from solver.choose_k import centered_density, centered_score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["400:40", "1000:20", "1000:100"],
                        help="n:k pairs (k planted groups of n/k tasks)")
    parser.add_argument("--sigma", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="lowrank")
    args = parser.parse_args()
    print(f"# torch threads {torch.get_num_threads()}, sigma={args.sigma}, seed={args.seed}, method={args.method}")
    print("| n | planted k | chosen k | seconds | ARI | D(chosen) | D(planted) | Q(chosen) | Q(planted) | "
          "candidates screened | solved | merge check (k → tried k) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for case in args.cases:
        n, k = (int(v) for v in case.split(":"))
        T, truth = planted(n, k, args.sigma, args.seed)
        start = time.perf_counter()
        g = cluster(T, "auto", method=args.method, seed=args.seed)
        seconds = time.perf_counter() - start
        record = g.k_selection or {}
        solved = [c["k"] for c in record.get("candidates", []) if c.get("score") is not None]
        merge_rounds = ", ".join(f"{r['k']} → {r['tried_k']}" for r in record.get("merge_check", []))
        print(f"| {n} | {k} | {g.k} | {seconds:.1f} | {adjusted_rand_score(truth, g.labels):.3f} | "
              f"{centered_density(T, g.labels):.4f} | {centered_density(T, truth):.4f} | "
              f"{centered_score(T, g.labels):.5f} | {centered_score(T, truth):.5f} | "
              f"{len(record.get('candidates', []))} | {solved} | {merge_rounds or '—'} |", flush=True)


if __name__ == "__main__":
    main()
