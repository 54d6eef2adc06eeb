"""How stable the output agreement's groups are when the base model is retrained from other seeds.

The advice calls the agreement's groups stable when the groups of θ* retrained from training seeds s + 1
and s + 2 on the same rows (``agreement.retrained_predictions``) match them: mean adjusted Rand index at
least ``reliability.STABLE_ARI`` (``reliability.agreement_stability``, the function the advice uses). For every
generated dataset of the outcome suite (same split: 20% of the rows held out and never read), printed per
row: that mean ARI at the planted number of groups and, for every dataset, at k = 3, 5 and 8 (what
unrelated tasks, which have no planted k, are judged at); then the mean over seeds and the share of rows
called stable.

    OMP_NUM_THREADS=1 python benchmarks/agreement_stability.py --seeds 3 4 5 6 7
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from outcome import manifest_for  # noqa: E402

from affinity.agreement import output_agreement, retrained_predictions  # noqa: E402
from affinity.outcome import held_out  # noqa: E402
from affinity.pipeline import prepare  # noqa: E402
from affinity.progress import Progress  # noqa: E402
from affinity.reliability import STABLE_ARI, agreement_stability, cluster_at  # noqa: E402

DATASETS = ["planted", "pooling", "conflict", "mixed", "regression", "shared_rows", "unrelated"]
FIXED_K = (3, 5, 8)


def row(name: str, seed: int) -> dict[str, float | None]:
    m = held_out(manifest_for(name, seed, {}))
    prep = prepare(m, Progress())
    agreement = output_agreement(prep.model, prep.tensors)
    retrained = retrained_predictions(prep.data, prep.tensors, m)
    truth = prep.data.truth_groups
    out: dict[str, float | None] = {}
    for label, k in [("planted k", len(truth) if truth else None)] + [(f"k={k}", k) for k in FIXED_K]:
        if k is None:
            out[label] = None
            continue
        labels = cluster_at(agreement, k, m.grouping).labels
        out[label] = agreement_stability(labels, retrained, m.grouping)["mean_ari"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5, 6, 7])
    parser.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    args = parser.parse_args()
    columns = ["planted k"] + [f"k={k}" for k in FIXED_K]
    print(f"mean ARI of the agreement's groups against base models retrained from 2 other seeds (stable: ≥ {STABLE_ARI})")
    print("dataset      seed  " + "  ".join(f"{c:>10}" for c in columns))
    results: dict[str, list[dict[str, float | None]]] = {}
    for name in args.datasets:
        for seed in args.seeds:
            r = row(name, seed)
            results.setdefault(name, []).append(r)
            print(f"{name:<12}{seed:>5}  " + "  ".join(f"{r[c]:>10.2f}" if r[c] is not None else f"{'—':>10}"
                                                       for c in columns), flush=True)
    print("\nmean over seeds (share of rows called stable)")
    for name, rows in results.items():
        cells = []
        for c in columns:
            v = [r[c] for r in rows if r[c] is not None]
            cells.append(f"{np.mean(v):.2f} ({np.mean([x >= STABLE_ARI for x in v]):.0%})" if v else "—")
        print(f"{name:<12}{'':>5}  " + "  ".join(f"{c:>10}" for c in cells))


if __name__ == "__main__":
    main()
