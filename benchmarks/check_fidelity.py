"""How well the advice's cross-validated check predicts each candidate grouping's test outcome.

Reads one outcome run's row (``runs/outcome/<seed>/<dataset>_<seed>/evaluation.json`` written by
``python benchmarks/outcome.py --candidates``: every candidate grouping with its test loss), checks the
same candidate groupings again on the same training and validation rows with other grouping settings
(``--set grouping.folds=10``), and prints, per candidate, the predicted gain over one model for all
beside the recorded one and the gain measured on the test rows.

    python benchmarks/check_fidelity.py --run runs/outcome --dataset mixed --seed 0 --set grouping.folds=10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from outcome import manifest_for, settings  # noqa: E402

from affinity.group_check import check_groupings  # noqa: E402
from affinity.outcome import held_out  # noqa: E402
from affinity.pipeline import prepare  # noqa: E402
from affinity.progress import Progress  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/outcome"), help="an outcome run's --out folder")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=JSON",
                    help="settings of the new check over the defaults (e.g. grouping.folds=10); give the run's own "
                         "settings too (e.g. grouping.check_seeds=3) where it had any")
    args = ap.parse_args()
    path = args.run / str(args.seed) / f"{args.dataset}_{args.seed}" / "evaluation.json"
    if not path.exists():
        path = args.run / f"{args.dataset}_{args.seed}" / "evaluation.json"
    report = json.loads(path.read_text())
    cands = next(iter(report["advice"].values()))["candidates"]
    if not all("test_loss" in c for c in cands):
        raise SystemExit(f"{path}: no candidate test losses (run benchmarks/outcome.py with --candidates)")
    overrides = settings(args.set)
    m = held_out(manifest_for(args.dataset, args.seed, overrides))
    prep = prepare(m, Progress())
    index = {t: i for i, t in enumerate(prep.data.task_names)}
    t0 = time.perf_counter()
    scores = check_groupings(prep.data, prep.tensors, m, {c["k"]: [[index[t] for t in g] for g in c["groups"]]
                                                          for c in cands}, Progress())
    seconds = time.perf_counter() - t0
    ref = scores[1].total()
    test_ref = next(c["test_loss"] for c in cands if c["k"] == 1)
    print(f"{args.dataset} seed {args.seed}, check with {overrides or 'the default settings'} "
          f"(folds {m.grouping.folds}, check_seeds {m.grouping.check_seeds}); gains over one model for all")
    print(f"{'k':>4} {'predicted':>10} {'recorded':>10} {'measured':>10}")
    new, measured = [], []
    for c in cands:
        p = (ref - scores[c["k"]].total()) / ref
        t = (test_ref - c["test_loss"]) / test_ref
        new.append(p)
        measured.append(t)
        print(f"{c['k']:>4} {p:>+10.1%} {c['predicted_gain']:>+10.1%} {t:>+10.1%}")
    new_a, meas_a = np.array(new), np.array(measured)
    old_a = np.array([c["predicted_gain"] for c in cands])
    print(f"mean |predicted − measured|: {np.mean(abs(new_a - meas_a)):.1%} (recorded check: "
          f"{np.mean(abs(old_a - meas_a)):.1%}); check {seconds:.0f} s")


if __name__ == "__main__":
    main()
