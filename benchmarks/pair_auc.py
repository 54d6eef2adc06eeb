"""How well an estimator's affinity T tells the planted groups: the AUC of T's pair affinities for
same-group pairs against the others, per seed of a generated dataset of the outcome suite.

The suite's manifest for the dataset and seed (benchmarks/outcome.py: the dataset section only, the
built-in job's other sections for text and graph, 20% of the rows held out as test rows), with
``estimation.method`` set and ``grouping.selection: affinity`` (T and its groups only; no check, so
seconds, not the suite's minutes). Prints one JSON line per seed: the AUC (0.5: T does not tell the
groups; 1: every same-group pair above every other), the estimator's seconds and the whole run's.

    python benchmarks/pair_auc.py --dataset text --seeds 0 1 2 --estimator grad_tag
    python benchmarks/pair_auc.py --dataset text --seeds 5 --estimator scratch
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from affinity.outcome import held_out
from affinity.pipeline import run_job
from outcome import DATASETS, manifest_for


def pair_auc(T: np.ndarray, names: list[str], truth: list[list[str]]) -> float:
    """AUC of the symmetrized pair affinity T[i, j] + T[j, i] for pairs in one planted group against the rest."""
    group = {t: g for g, members in enumerate(truth) for t in members}
    same, score = [], []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            same.append(group[names[i]] == group[names[j]])
            score.append(T[i, j] + T[j, i])
    return float(roc_auc_score(same, score))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="text", choices=sorted(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--estimator", default="grad_tag", choices=["grad_tag", "scratch", "exact", "tag_lookahead",
                                                                  "gradient_cosine"])
    args = ap.parse_args()
    for seed in args.seeds:
        m = held_out(manifest_for(args.dataset, seed, {"estimation": {"method": args.estimator},
                                                       "grouping": {"selection": "affinity"}}))
        t0 = time.perf_counter()
        result = run_job(m)
        truth = result.data.truth_groups
        if not truth:
            raise SystemExit(f"{args.dataset} has no planted groups to compare T with")
        print(json.dumps({"dataset": args.dataset, "seed": seed, "estimator": args.estimator,
                          "auc": round(pair_auc(result.estimate.matrix, result.data.task_names, truth), 3),
                          "estimator_seconds": round(result.estimate.seconds), "seconds":
                          round(time.perf_counter() - t0)}), flush=True)


if __name__ == "__main__":
    main()
