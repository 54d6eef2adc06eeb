"""How well each source of candidate groupings sees the planted groups, before any check.

For every generated dataset with planted groups (the outcome suite's rows, same split: 20% of the rows held out
and never read), the base model θ* is trained as the job trains it, and task × task matrices are computed:
the default estimator's affinity (scratch, pairwise regression) and Grad-TAG's, each without task effects (the
pair-specific part the candidates cluster), the cosine of the tasks' mean gradients (gradient_cosine), and θ*'s
output agreement (affinity/agreement.py: correlation of its predictions over the training and validation rows);
and two mixtures: "T + agreement" (the job's estimator's pair-specific T and the agreement, each as ranks,
averaged) and "agreement mean of 3" (the agreement of θ* and of the two base models retrained from other seeds,
averaged: the matrix ``grouping.agreement_consensus: mean`` clusters).
Printed per row and averaged per dataset: the pair AUC (same planted group vs not, over task pairs) and the
adjusted Rand index of the matrix's groups at the planted number of groups (solver.cluster, as the candidates
are made), and the seconds of each source. ``text`` is the built-in text job's manifest (MiniLM with LoRA) on
the suite's rows; ``--sources`` names the sources to compute (by default the four single ones; the scratch T of
a text seed trains 100 transformers: minutes per seed).

    OMP_NUM_THREADS=1 python benchmarks/candidate_sources.py --seeds 3 4 5 6 7
    HF_HUB_OFFLINE=1 python benchmarks/candidate_sources.py --datasets text --seeds 0 1 2 3 4 5 6 \
        --sources "grad_tag T" "gradient cosine" "output agreement"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from outcome import manifest_for  # noqa: E402

from affinity.agreement import correlation, output_agreement, retrained_predictions  # noqa: E402
from affinity.estimators import ESTIMATORS  # noqa: E402
from affinity.outcome import held_out  # noqa: E402
from affinity.pipeline import context, prepare  # noqa: E402
from affinity.progress import Progress  # noqa: E402
from affinity.reliability import pair_specific  # noqa: E402
from solver import cluster  # noqa: E402

DATASETS = ["planted", "pooling", "conflict", "mixed", "regression", "shared_rows", "text"]
TABLES = DATASETS[:-1]
SOURCES = ["scratch T", "grad_tag T", "gradient cosine", "output agreement", "T + agreement",
           "agreement mean of 3"]
MATRICES = {"scratch T": lambda prep, ctx: pair_specific(ESTIMATORS["scratch"](ctx).matrix),
            "grad_tag T": lambda prep, ctx: pair_specific(ESTIMATORS["grad_tag"](ctx).matrix),
            "gradient cosine": lambda prep, ctx: ESTIMATORS["gradient_cosine"](ctx).matrix,
            "output agreement": lambda prep, ctx: output_agreement(prep.model, prep.tensors)}


def ranks(M: np.ndarray) -> np.ndarray:
    """The symmetric matrix with its off-diagonal entries replaced by their ranks scaled to [0, 1] (diagonal 1)."""
    upper = np.triu_indices(len(M), 1)
    r = np.argsort(np.argsort(M[upper])) / max(len(upper[0]) - 1, 1)
    R = np.eye(len(M))
    R[upper] = r
    return R + np.triu(R, 1).T


def combined(prep, ctx, method: str) -> np.ndarray:
    """The job's estimator's pair-specific T and the output agreement, each as ranks, averaged."""
    T = pair_specific(ESTIMATORS[method](ctx).matrix)
    return (ranks(T) + ranks(output_agreement(prep.model, prep.tensors))) / 2


def agreement_mean(prep, manifest, progress) -> np.ndarray:
    """What ``grouping.agreement_consensus: mean`` clusters: θ*'s agreement averaged with those of the two base
    models the stability check retrains (training seeds s + 1, s + 2)."""
    outputs = retrained_predictions(prep.data, prep.tensors, manifest, progress)
    return (output_agreement(prep.model, prep.tensors) + sum(correlation(O) for O in outputs)) / (1 + len(outputs))


def pair_auc(M: np.ndarray, labels: np.ndarray) -> float:
    """AUC of the symmetric matrix's entries for task pairs of one planted group (``labels``) against the rest."""
    upper = np.triu_indices(len(labels), 1)
    return float(roc_auc_score((labels[:, None] == labels[None, :])[upper], M[upper]))


def row(name: str, seed: int, sources: list[str]) -> dict[str, tuple[float, float, float]]:
    """Per source: pair AUC, ARI of its groups at the planted k, seconds."""
    m = held_out(manifest_for(name, seed, {}))
    progress = Progress()
    prep = prepare(m, progress)
    ctx = context(prep, m, progress)
    group = {t: g for g, members in enumerate(prep.data.truth_groups) for t in members}
    truth = np.array([group[t] for t in prep.data.task_names])
    out = {}
    for source in sources:
        t0 = time.perf_counter()
        if source == "T + agreement":
            M = combined(prep, ctx, m.estimation.method)
        elif source == "agreement mean of 3":
            M = agreement_mean(prep, m, progress)
        else:
            M = MATRICES[source](prep, ctx)
        out[source] = (pair_auc(M, truth), float(adjusted_rand_score(truth, cluster(M, len(prep.data.truth_groups),
                                                                                     seed=0).labels)),
                       time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5, 6, 7])
    parser.add_argument("--datasets", nargs="+", default=TABLES, choices=DATASETS,
                        help="default: the generated tables (text only when named)")
    parser.add_argument("--sources", nargs="+", default=SOURCES[:4], choices=SOURCES,
                        help="default: the four single sources (the mixtures only when named)")
    args = parser.parse_args()
    sources = [s for s in SOURCES if s in args.sources]
    print("dataset      seed  " + "  ".join(f"{s:>28}" for s in sources) + "   (pair AUC, ARI at planted k, seconds)")
    results: dict[str, list[dict[str, tuple[float, float, float]]]] = {}
    for name in args.datasets:
        for seed in args.seeds:
            r = row(name, seed, sources)
            results.setdefault(name, []).append(r)
            print(f"{name:<12}{seed:>5}  " + "  ".join(f"{r[s][0]:>11.2f} {r[s][1]:>10.2f} {r[s][2]:>5.0f}"
                                                       for s in sources), flush=True)
    print("\nmean over seeds")
    for name, rows in results.items():
        print(f"{name:<12}{'':>5}  " + "  ".join(
            f"{np.mean([r[s][0] for r in rows]):>11.2f} {np.mean([r[s][1] for r in rows]):>10.2f} {'':>5}"
            for s in sources))


if __name__ == "__main__":
    main()
