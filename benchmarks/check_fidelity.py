"""How well the advice's cross-validated check predicts each candidate grouping's test outcome.

Reads one outcome run's row (``runs/outcome/<seed>/<dataset>_<seed>/evaluation.json`` written by
``python benchmarks/outcome.py --candidates``: every candidate grouping with its test loss), checks the
same candidate groupings again on the same training and validation rows with other grouping settings
(``--set grouping.folds=10``), and prints, per candidate, the predicted gain over one model for all
beside the recorded one and the gain measured on the test rows; then the mean absolute error and the rank
correlation (Spearman) of the predicted gains with the measured ones over the candidates other than one model
for all, for the new check and the recorded one, and the new check's choice.

    python benchmarks/check_fidelity.py --run runs/outcome --dataset mixed --seed 0 --set grouping.folds=10

``--also``: more runs of the same row whose groupings were trained from other seeds (``outcome.py --rescore --set
training.seed=S``, benchmarks/training_noise.py); the measured gains are then the mean over all the runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from outcome import keyed, output_keys, run_manifest, settings  # noqa: E402

from affinity.choice import choose, fold_gains, standard_error  # noqa: E402
from affinity.group_check import check_groupings  # noqa: E402
from affinity.pipeline import prepare  # noqa: E402
from affinity.progress import Progress  # noqa: E402


def evaluation_path(run: Path, dataset: str, seed: int) -> Path:
    """The evaluation.json of one (dataset, seed) row of an outcome run (merged or single-seed folder)."""
    path = run / str(seed) / f"{dataset}_{seed}" / "evaluation.json"
    return path if path.exists() else run / f"{dataset}_{seed}" / "evaluation.json"


def measured_gains(report: dict[str, Any]) -> dict[Any, float]:
    """Every candidate's measured gain over one model for all (the same run's), by its advice key (``keyed``: k, or
    (k, "outputs")), and the planted grouping's ("planted") where the run has one."""
    advice = next(iter(report["advice"].values()))
    cands = keyed(advice["candidates"])
    ref = cands[1]["test_loss"]
    out: dict[Any, float] = {key: (ref - c["test_loss"]) / ref for key, c in cands.items()}
    planted = report["groupings"].get("planted")
    if planted is not None:
        out["planted"] = (ref - planted["sum_test_loss"]) / ref
    return out


def recheck(path: Path, dataset: str, seed: int, overrides: dict) -> tuple[dict, Any, dict, float]:
    """The recorded advice of one row (its candidates with their test losses), the manifest of the new check,
    its scores of those candidates (``check_groupings`` on the same training and validation rows) and its
    seconds."""
    report = json.loads(path.read_text())
    advice = next(iter(report["advice"].values()))
    cands = advice["candidates"]
    if not all("test_loss" in c for c in cands):
        raise SystemExit(f"{path}: no candidate test losses (run benchmarks/outcome.py with --candidates)")
    m = run_manifest(report, dataset, seed, overrides)
    prep = prepare(m, Progress())
    index = {t: i for i, t in enumerate(prep.data.task_names)}
    t0 = time.perf_counter()
    scores = check_groupings(prep.data, prep.tensors, m, {key: [[index[t] for t in g] for g in c["groups"]]
                                                          for key, c in keyed(cands).items()}, Progress())
    return advice, m, scores, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/outcome"), help="an outcome run's --out folder")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=JSON",
                    help="settings of the new check over the run's own (its evaluation.json's manifest; the "
                         "suite's defaults where it has none), e.g. grouping.folds=10")
    ap.add_argument("--also", nargs="*", type=Path, default=[],
                    help="rescored runs of the row (other training seeds): measured gains averaged over all runs")
    args = ap.parse_args()
    overrides = settings(args.set)
    advice, m, scores, seconds = recheck(evaluation_path(args.run, args.dataset, args.seed), args.dataset, args.seed,
                                         overrides)
    cands = advice["candidates"]
    ref = scores[1].total()
    test_ref = next(c["test_loss"] for c in cands if c["k"] == 1)
    others = [measured_gains(json.loads(evaluation_path(run, args.dataset, args.seed).read_text()))
              for run in args.also]
    print(f"{args.dataset} seed {args.seed}, check with {overrides or 'the default settings'} "
          f"(folds {m.grouping.folds}, check_seeds {m.grouping.check_seeds}); gains over one model for all")
    print(f"{'k':>4} {'predicted':>10} {'2 SE':>6} {'recorded':>10} {'measured':>10}")
    by_key = keyed(cands)
    new, measured = [], []
    for key, c in by_key.items():
        p = (ref - scores[key].total()) / ref
        t = float(np.mean([(test_ref - c["test_loss"]) / test_ref] + [o[key] for o in others]))
        new.append(p)
        measured.append(t)
        se = standard_error(fold_gains(scores[key], scores[1]))
        print(f"{c['k']:>4} {p:>+10.1%} {2 * se:>6.1%} {c['predicted_gain']:>+10.1%} "
              f"{t:>+10.1%}")
    new_a, meas_a = np.array(new), np.array(measured)
    old_a = np.array([c["predicted_gain"] for c in cands])
    print(f"mean |predicted − measured|: {np.mean(abs(new_a - meas_a)):.1%} (recorded check: "
          f"{np.mean(abs(old_a - meas_a)):.1%}); check {seconds:.0f} s")
    splits = [i for i, key in enumerate(by_key) if key != 1]
    print(f"rank correlation of predicted and measured gains over the {len(splits)} other candidates: "
          f"{spearmanr(new_a[splits], meas_a[splits])[0]:.2f} (recorded check: "
          f"{spearmanr(old_a[splits], meas_a[splits])[0]:.2f})")
    chosen = choose(scores, list(by_key), m.grouping, outputs=output_keys(by_key))
    print(f"chosen k = {chosen}: measured gain {meas_a[list(by_key).index(chosen)]:+.1%} "
          f"(recorded choice k = {advice['k']}; best candidate on test {max(measured):+.1%})"
          + (f"; measured: the mean over {1 + len(others)} trainings" if others else ""))


if __name__ == "__main__":
    main()
