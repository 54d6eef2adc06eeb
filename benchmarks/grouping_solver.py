"""Benchmark of solver.cluster on planted block matrices: sdp (SCS) vs lowrank vs spectral.

T = 0.8 within groups of n/k tasks, 0.2 across, plus sigma·N(0,1) noise, symmetrized; k = n/10.
With --random: T uniform on [0, 1), symmetrized (no group structure; ARI is meaningless there),
to measure how far lowrank's relaxation stays below the exact SDP's.
Usage: python benchmarks/grouping_solver.py [--sizes 50 100 200 400 800 2000] [--sigma 0.1] [--seed 0]
       [--methods sdp lowrank spectral] [--random]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from solver import cluster

SCS_MAX_N = 800  # SCS at n=1600 took 285 s and 6.5 GB


def planted(n: int, k: int, sigma: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Planted block matrix with k equal groups (0.8 inside, 0.2 across) and Gaussian noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) * k // n
    T = np.where(labels[:, None] == labels[None, :], 0.8, 0.2) + sigma * rng.standard_normal((n, n))
    return (T + T.T) / 2, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200, 400, 800, 2000])
    parser.add_argument("--sigma", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=["sdp", "lowrank", "spectral"],
                        help="subset of sdp lowrank spectral (e.g. skip SCS's minutes at n=800)")
    parser.add_argument("--random", action="store_true", help="uniform random T instead of planted blocks")
    args = parser.parse_args()
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}, sigma={args.sigma}")
    header = ("| n | k | method | seconds | relaxation obj | rounded obj | ARI | time / SCS "
              "| relax. rel. diff vs SCS |")
    print(header)
    print("|" + "---|" * 9)
    for n in args.sizes:
        k = max(2, n // 10)
        T, truth = planted(n, k, args.sigma, args.seed)
        if args.random:
            R = np.random.default_rng(args.seed).random((n, n))
            T = (R + R.T) / 2
        ref = None
        for method in args.methods:
            if method == "sdp" and n > SCS_MAX_N:
                print(f"| {n} | {k} | sdp (SCS) | skipped (n too large) | | | | | |")
                continue
            start = time.perf_counter()
            g = cluster(T, k, method=method, seed=args.seed)
            secs = time.perf_counter() - start
            ari = adjusted_rand_score(truth, g.labels)
            relax = "" if g.relaxation_objective is None else f"{g.relaxation_objective:.4f}"
            ratio = diff = ""
            if method == "sdp":
                ref = (secs, g.relaxation_objective)
            elif ref is not None:
                ratio = f"{secs / ref[0]:.3f}"
                if g.relaxation_objective is not None:
                    diff = f"{(g.relaxation_objective - ref[1]) / abs(ref[1]):+.2e}"
            name = "sdp (SCS)" if method == "sdp" else method
            print(f"| {n} | {k} | {name} | {secs:.2f} | {relax} | {g.objective:.4f} | {ari:.3f} "
                  f"| {ratio} | {diff} |", flush=True)


if __name__ == "__main__":
    main()
