"""Does the check's seed spread predict how far one training strays on the test rows?

The advice records, for every candidate grouping, ``seed_sd``: the standard deviation over the check's seeds of the
grouping's summed loss on a fold, relative to one model for all's (``affinity.choice.seed_spread``). An outcome run
with ``--train-seeds 3 --candidates`` trains every candidate from 3 seeds and records each training's summed test
loss (``seed_test_losses``). This script reads such runs and prints, per (dataset, seed) row, the median over its
candidates of the predicted spread and of the measured one (the standard deviation over the trainings of the summed
test loss, relative to one model for all's mean test loss) and their rank correlation over the candidates; then the
same over all rows.

    python benchmarks/seed_spread.py runs/outcome/3 runs/outcome/4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr


def spreads(report: dict[str, Any]) -> list[tuple[float, float]]:
    """(predicted, measured) spread of one training for every candidate of a run's row that has both."""
    advice = next(iter(report["advice"].values()))
    ref = next(c["test_loss"] for c in advice["candidates"] if c["k"] == 1)
    out = []
    for c in advice["candidates"]:
        losses = c.get("seed_test_losses") or []
        if c.get("seed_sd") is not None and len(losses) >= 2:
            out.append((float(c["seed_sd"]), float(np.std(losses, ddof=1) / ref)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="outcome runs' --out folders (searched for evaluation.json)")
    args = ap.parse_args()
    pooled: list[tuple[float, float]] = []
    print(f"{'row':<16} {'candidates':>10} {'check':>7} {'test':>7} {'rank corr':>9}")
    for path in sorted({p for run in args.runs for p in run.rglob("evaluation.json")}):
        report = json.loads(path.read_text())
        pairs = spreads(report)
        if not pairs:
            continue
        pooled += pairs
        p, m = np.array(pairs).T
        rho = spearmanr(p, m)[0] if len(pairs) > 2 else float("nan")
        print(f"{path.parent.name:<16} {len(pairs):>10} {np.median(p):>7.2%} {np.median(m):>7.2%} {rho:>+9.2f}")
    if not pooled:
        raise SystemExit("no candidates with both seed_sd and seed_test_losses (outcome.py --train-seeds 3 "
                         "--candidates, grouping.check_seeds > 1)")
    p, m = np.array(pooled).T
    print(f"all {len(pooled)} candidates: median predicted {np.median(p):.2%}, measured {np.median(m):.2%}; "
          f"median of predicted / measured {np.median(p / np.maximum(m, 1e-12)):.2f}; "
          f"rank correlation {spearmanr(p, m)[0]:+.2f}")


if __name__ == "__main__":
    main()
