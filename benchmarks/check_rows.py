"""Where the check's error on one model per task comes from: its models, or the rows it scores them on.

The advice's check (affinity/group_check.py) trains, for every fold, one model for all tasks and one model per
task on the other folds of the training rows (stopped on the validation rows) and scores them on the fold. This
script trains exactly those fold models (the job's defaults, the outcome suite's dataset and seed) and scores
them twice: on their out-of-fold training rows (what the check reads) and on the held-out test rows (20% of the
rows plus ``--test-rows`` more per task for generated datasets, as in benchmarks/outcome.py). If the two gains of
one model per task over one model for all differ, the check's error lies in the rows it can score, not in how
its models are trained.

    python benchmarks/check_rows.py --dataset unrelated --seeds 6 11
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from outcome import DATASETS, manifest_for  # noqa: E402

from affinity.choice import standard_error  # noqa: E402
from affinity.finetune import finetune_subsets  # noqa: E402
from affinity.group_check import cv_folds  # noqa: E402
from affinity.kinds import make_model  # noqa: E402
from affinity.outcome import held_out  # noqa: E402
from affinity.pipeline import prepare  # noqa: E402
from affinity.progress import Progress  # noqa: E402
from affinity.training import TensorData  # noqa: E402


def fold_model_gains(dataset: str, seed: int, test_rows: int) -> tuple[float, list[float], float]:
    """The gain of one model per task over one model for all, read with the check's fold models: on the folds' rows
    (row-weighted over every fold, as the check reads it, and fold by fold) and on the test rows (each fold's models
    scored on all of them, the per-task losses averaged over the folds)."""
    m = held_out(manifest_for(dataset, seed, {}, test_rows))
    prep = prepare(m, Progress())
    t, n = prep.tensors, prep.data.n_tasks
    groups = [tuple(range(n))] + [(i,) for i in range(n)]
    fold_sum = np.zeros((2, n))  # (together, alone) × tasks: losses × rows over the folds
    fold_rows = np.zeros(n)
    test = np.zeros((2, n))
    per_fold = []
    views = cv_folds(t, m.grouping.folds, m.grouping.seed, m.grouping.check_stop)
    for view in views:
        fresh = make_model(m.model, prep.data, m.training.seed)
        on_test = TensorData(view.X, view.Y, view.train, view.val, view.binary, t.test)
        for scored in (view, on_test):  # the same seeded training twice: the same models, scored on other rows
            _, loss = finetune_subsets(fresh, scored, groups, m.training, m.estimation.exact_batch, Progress(),
                                       return_test=True)
            pair = np.stack([loss[0, :n], loss[1:, 0]])
            if scored is view:
                w = view.test.sum(0).cpu().numpy()
                pair = np.where(w > 0, pair, 0.0)
                fold_sum += pair * w
                fold_rows += w
                per_fold.append(float((pair[0].sum() - pair[1].sum()) / pair[0].sum()))
            else:
                test += pair / len(views)
    folds = fold_sum / np.maximum(fold_rows, 1)
    gain = lambda L: float((L[0].sum() - L[1].sum()) / L[0].sum())  # noqa: E731
    return gain(folds), per_fold, gain(test)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="unrelated", choices=list(DATASETS))
    ap.add_argument("--seeds", nargs="*", type=int, default=[6, 11])
    ap.add_argument("--test-rows", type=int, default=500, help="extra test rows per task (generated datasets)")
    args = ap.parse_args()
    print(f"{'dataset':<12}{'seed':>5} {'gain on fold rows':>18} {'2 SE':>6} {'gain on test rows':>18} {'sec':>5}")
    for seed in args.seeds:
        t0 = time.perf_counter()
        on_folds, per_fold, on_test = fold_model_gains(args.dataset, seed, args.test_rows)
        print(f"{args.dataset:<12}{seed:>5} {on_folds:>+18.1%} {2 * standard_error(per_fold):>6.1%} "
              f"{on_test:>+18.1%} {time.perf_counter() - t0:>5.0f}", flush=True)


if __name__ == "__main__":
    main()
