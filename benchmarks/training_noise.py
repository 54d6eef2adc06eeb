"""How much one training's outcome depends on its seed: the same candidate groupings, trained again from other seeds.

Reads one (dataset, seed) row from several outcome runs (``--candidates`` runs and ``--rescore`` runs of it, each
trained from its own ``training.seed``; same training, validation and test rows) and prints, per candidate grouping,
its measured gain over one model for all in each run, their mean and standard deviation; then how alike two runs
rank the candidates (Spearman over the candidates other than one model for all, every pair of runs) and what the
mean over the runs makes of the recorded advice. A grouping's gain measured on one training is one draw of this
spread: where the runs rank the candidates differently, one training cannot tell the candidates apart.

    python benchmarks/outcome.py --merge runs/text_sf5/4 --rescore --test-rows 150 --train-seeds 1 --random 0 \\
        --set training.seed=14 --out runs/rescore/4_14
    python benchmarks/training_noise.py --dataset text --seed 4 --runs runs/text_sf5/4 runs/rescore/4_14
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from check_fidelity import evaluation_path, measured_gains  # noqa: E402
from outcome import keyed  # noqa: E402


def advised_key(report: dict[str, Any]) -> Any:
    """The recorded advice's candidate key (``keyed``'s): the candidate with the recommended groups."""
    name, advice = next(iter(report["advice"].items()))
    groups = {frozenset(g) for g in report["groupings"][name]["groups"]}
    return next(key for key, c in keyed(advice["candidates"]).items() if {frozenset(g) for g in c["groups"]} == groups)


def label(key: Any, candidates: dict[Any, dict[str, Any]]) -> str:
    """A key as the printout names it: k and the candidate's source."""
    if key == "planted":
        return key
    source = candidates[key].get("source")
    return f"{key[0] if isinstance(key, tuple) else key} {source or ''}".strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--runs", nargs="+", type=Path, required=True, help="outcome runs' --out folders of the row")
    args = ap.parse_args()
    reports = [json.loads(evaluation_path(run, args.dataset, args.seed).read_text()) for run in args.runs]
    seeds = [r["manifest"]["training"]["seed"] for r in reports]
    gains = [measured_gains(r) for r in reports]
    keys = [k for k in gains[0] if all(k in g for g in gains)]
    cands = keyed(next(iter(reports[0]["advice"].values()))["candidates"])
    print(f"{args.dataset} seed {args.seed}: gain over one model for all per training seed {seeds}")
    for k in keys:
        v = np.array([g[k] for g in gains])
        runs = " ".join(f"{x:+7.1%}" for x in v)
        spread = f"  sd {v.std(ddof=1):5.1%}" if len(v) > 1 else ""  # one run: its gains alone
        print(f"  {label(k, cands):>12} {runs}   mean {v.mean():+6.1%}{spread}")
    splits = [k for k in keys if k not in (1, "planted")]
    if len(gains) > 1:
        sd = np.median([np.std([g[k] for g in gains], ddof=1) for k in splits])
        print(f"median over the {len(splits)} splits of the sd of their gain: {sd:.1%}")
    for (i, a), (j, b) in itertools.combinations(enumerate(gains), 2):
        rho = spearmanr([a[k] for k in splits], [b[k] for k in splits])[0]
        print(f"rank correlation of the {len(splits)} splits' gains, training seeds {seeds[i]} and {seeds[j]}: "
              f"{rho:+.2f}")
    mean = {k: float(np.mean([g[k] for g in gains])) for k in keys}
    best = max((k for k in keys if k != "planted"), key=mean.get)
    advised = advised_key(reports[0])
    print(f"mean over the runs: the recorded advice ({label(advised, cands)}) {mean[advised]:+.1%}, "
          f"the best candidate ({label(best, cands)}) {mean[best]:+.1%}"
          + (f", the planted grouping {mean['planted']:+.1%}" if "planted" in mean else ""))


if __name__ == "__main__":
    main()
