"""Grad-TAG's surrogate penalty, fixed or chosen on the validation rows, against really fine-tuning θ*.

Fine-tuning θ* on a subset (the `exact` estimator, as `task-affinity validate` runs it) is early-stopped on the
validation rows, and its best epoch may be epoch 0: θ* itself. The surrogate's counterpart is
``estimation.l2_select: validation``: each subset's fit at l2 × 1, 3, 10, 30, 100 and with no change (w = 0),
keeping the one whose mean validation loss over the subset's tasks is lowest. For each built-in job named, with
the same held-out subsets and one exact fine-tuning of each (the rows `validate` uses: test rows held out), this
prints the median relative error of the per-(subset, task) validation losses and their Spearman correlation for:
the fixed penalty (the job's l2), the penalty chosen on the validation rows, and "fine-tuning changes nothing"
(θ*'s own losses); and how often each penalty of the path was kept.

    python benchmarks/penalty_path.py [--jobs text graph images planted] [--subsets 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from affinity.defaults import builtin_manifest
from affinity.estimate import PairData, grad_tag_table, penalty_path
from affinity.estimators import exact
from affinity.devices import solve_dtype
from affinity.estimators.grad_tag import gradient_features
from affinity.outcome import held_out
from affinity.pipeline import context, prepare
from affinity.progress import Progress
from affinity.validation import held_out_subsets, relative_errors, unchanged_losses


def errors(estimate: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    ok = np.isfinite(estimate) & np.isfinite(truth)
    return float(np.median(relative_errors(estimate, truth))), float(spearmanr(estimate[ok], truth[ok]).statistic)


def run(job: str, n_subsets: int) -> None:
    manifest = held_out(builtin_manifest(job))
    spec = manifest.estimation
    progress = Progress()
    prep = prepare(manifest, progress)
    held = held_out_subsets(prep, manifest, n_subsets)
    t0 = time.perf_counter()
    truth = exact.estimate(context(prep, manifest, progress), held).table.val_loss
    exact_seconds = time.perf_counter() - t0
    grads = gradient_features(prep.model, prep.data, spec, prep.device, progress)
    pairs = PairData.build(grads, np.nan_to_num(prep.data.Y), prep.data.train, prep.data.is_binary, prep.device,
                           solve_dtype(prep.device))
    base, _ = pairs.base_scores()
    path = penalty_path(spec.l2)
    each = [grad_tag_table(pairs, held, l2).val_loss for l2 in path[:-1]]
    each.append(unchanged_losses(base, held, truth.shape[1]))
    t1 = time.perf_counter()
    chosen = grad_tag_table(pairs, held, path).val_loss
    path_seconds = time.perf_counter() - t1
    kept = [int(np.sum(np.all(np.isclose(chosen, e, equal_nan=True), axis=1))) for e in each]
    print(f"{job}: {len(held)} held-out subsets of {len(held[0])}, exact {exact_seconds:.1f} s, "
          f"the path's fits {path_seconds:.1f} s")
    for label, est in ((f"l2 fixed ({spec.l2:g})", each[0]), ("l2 chosen on validation", chosen),
                       ("unchanged (theta*)", each[-1])):
        median, rho = errors(est, truth)
        print(f"  {label:>24}: median relative error {median:.4f}, Spearman {rho:.3f}")
    print("  kept: " + ", ".join(f"{'none' if np.isinf(l2) else format(l2, 'g')} {k}" for l2, k in zip(path, kept)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", nargs="*", default=["text", "graph", "images", "planted"])
    ap.add_argument("--subsets", type=int, default=20)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for job in args.jobs:
        run(job, args.subsets)


if __name__ == "__main__":
    main()
