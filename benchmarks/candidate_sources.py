"""How well each source of candidate groupings sees the planted groups, before any check.

For every generated dataset with planted groups (the outcome suite's rows, same split: 20% of the rows held out
and never read), the base model θ* is trained as the job trains it, and four task × task matrices are computed:
the default estimator's affinity (scratch, pairwise regression) and Grad-TAG's, each without task effects (the
pair-specific part the candidates cluster), the cosine of the tasks' mean gradients (gradient_cosine), and θ*'s
output agreement (affinity/agreement.py: correlation of its predictions over the training and validation rows).
Printed per row and averaged per dataset: the pair AUC (same planted group vs not, over task pairs) and the
adjusted Rand index of the matrix's groups at the planted number of groups (solver.cluster, as the candidates
are made).

    OMP_NUM_THREADS=1 python benchmarks/candidate_sources.py --seeds 3 4 5 6 7
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from outcome import manifest_for  # noqa: E402

from affinity.agreement import output_agreement  # noqa: E402
from affinity.estimators import ESTIMATORS  # noqa: E402
from affinity.outcome import held_out  # noqa: E402
from affinity.pipeline import context, prepare  # noqa: E402
from affinity.progress import Progress  # noqa: E402
from affinity.reliability import pair_specific  # noqa: E402
from solver import cluster  # noqa: E402

DATASETS = ["planted", "pooling", "conflict", "mixed", "regression", "shared_rows"]
SOURCES = ["scratch T", "grad_tag T", "gradient cosine", "output agreement"]


def row(name: str, seed: int) -> dict[str, tuple[float, float]]:
    m = held_out(manifest_for(name, seed, {}))
    progress = Progress()
    prep = prepare(m, progress)
    ctx = context(prep, m, progress)
    names = prep.data.task_names
    group = {t: g for g, members in enumerate(prep.data.truth_groups) for t in members}
    truth = np.array([group[t] for t in names])
    k = len(prep.data.truth_groups)
    upper = np.triu_indices(len(names), 1)
    same = (truth[:, None] == truth[None, :])[upper]
    matrices = {"scratch T": pair_specific(ESTIMATORS["scratch"](ctx).matrix),
                "grad_tag T": pair_specific(ESTIMATORS["grad_tag"](ctx).matrix),
                "gradient cosine": ESTIMATORS["gradient_cosine"](ctx).matrix,
                "output agreement": output_agreement(prep.model, prep.tensors)}
    return {source: (float(roc_auc_score(same, M[upper])),
                     float(adjusted_rand_score(truth, cluster(M, k, seed=0).labels)))
            for source, M in matrices.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5, 6, 7])
    parser.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    args = parser.parse_args()
    print("dataset      seed  " + "  ".join(f"{s:>22}" for s in SOURCES) + "   (pair AUC, ARI at planted k)")
    results: dict[str, list[dict[str, tuple[float, float]]]] = {}
    for name in args.datasets:
        for seed in args.seeds:
            r = row(name, seed)
            results.setdefault(name, []).append(r)
            print(f"{name:<12}{seed:>5}  " + "  ".join(f"{r[s][0]:>11.2f} {r[s][1]:>10.2f}" for s in SOURCES),
                  flush=True)
    print("\nmean over seeds")
    for name, rows in results.items():
        print(f"{name:<12}{'':>5}  " + "  ".join(
            f"{np.mean([r[s][0] for r in rows]):>11.2f} {np.mean([r[s][1] for r in rows]):>10.2f}" for s in SOURCES))


if __name__ == "__main__":
    main()
