"""Multitask optimizers on a built-in dataset with competing tasks, in one run.

For every ``training.mtl_method``: the mean over tasks of the validation loss of the trained model
(best-validation state, as ``train_model`` keeps it), Δm% against one model per task, and seconds
per epoch. Every model has the same architecture (the job's (planted: the bottleneck model of affinity.defaults.BOTTLENECK), with per-task normalization,
which connection strength needs), initialization seed, Adam settings and early stopping; only the
multitask method differs. ``equal (no task norm)`` is the job's own model, for reference.

Δm% = 100 · mean_t (L_single,t − L_method,t) / L_single,t, with L the validation loss (BCE) and
"single" one model per task trained with the same loop on that task alone: positive = better than
one model per task (the sign convention of Maninis et al. and of the connection-strength paper).

    python benchmarks/optimizers.py [--dataset planted|digits] [--epochs 120] [--seeds 1] [--methods a,b]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from affinity.data import load_dataset
from affinity.defaults import bottleneck_manifest, builtin_manifest
from affinity.manifest import MTL_METHODS
from affinity.models import build_model
from affinity.training import TensorData, train_model


def run(dataset: str, epochs: int, seeds: int, methods: list[str]) -> list[dict]:
    # planted: with the bottleneck model (affinity.defaults.BOTTLENECK), where its groups compete
    manifest = bottleneck_manifest() if dataset == "planted" else builtin_manifest(dataset)
    data = load_dataset(manifest.dataset)
    tensors = TensorData.from_split(data, torch.device("cpu"))
    n = data.n_tasks
    rows = []

    def train(name: str, task_norm: bool, method: str, tasks: list[int] | None, seed: int):
        model_spec = manifest.model.model_copy(update={"task_norm": task_norm})
        spec = manifest.training.model_copy(update={"mtl_method": method, "epochs": epochs, "seed": seed,
                                                    "device": "cpu"})
        model = build_model(model_spec, data.X.shape[1], n, seed)
        t0 = time.perf_counter()
        res = train_model(model, tensors, spec, tasks=None if tasks is None else torch.tensor(tasks))
        return res, time.perf_counter() - t0

    single = np.zeros((seeds, n))
    single_s = 0.0
    single_epochs = 0
    for s in range(seeds):
        for t in range(n):
            res, sec = train("single", True, "equal", [t], s)
            single[s, t] = res.task_val_loss[t]
            single_s += sec
            single_epochs += res.epochs_run
    base = single.mean(0)
    rows.append({"method": "one model per task", "val_loss": float(base.mean()), "delta_m": 0.0,
                 "s_per_epoch": single_s / single_epochs * n, "epochs": single_epochs / seeds / n})
    plan = [("equal (no task norm)", False, "equal")] + [(m, True, m) for m in methods]
    for label, task_norm, method in plan:
        losses, secs, eps = [], 0.0, 0
        for s in range(seeds):
            res, sec = train(label, task_norm, method, None, s)
            losses.append(res.task_val_loss)
            secs += sec
            eps += res.epochs_run
        loss = np.mean(losses, axis=0)
        rows.append({"method": label, "val_loss": float(loss.mean()),
                     "delta_m": float(100 * np.mean((base - loss) / base)),
                     "s_per_epoch": secs / eps, "epochs": eps / seeds})
        print(f"  {label}: done", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="planted", choices=["planted", "digits"])
    ap.add_argument("--epochs", type=int, default=120, help="Maximum epochs (early stopping as in the job).")
    ap.add_argument("--seeds", type=int, default=1, help="Initialization/shuffle seeds averaged over.")
    ap.add_argument("--methods", default=",".join(MTL_METHODS), help="Comma-separated training.mtl_method values.")
    ap.add_argument("--threads", type=int, default=1, help="Torch threads (1: tiny models on a shared CPU run faster single-threaded).")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, dataset {args.dataset}, "
          f"epochs ≤ {args.epochs}, seeds {args.seeds}")
    rows = run(args.dataset, args.epochs, args.seeds, methods)
    print(f"| method | mean val loss | Δm% vs one model per task | s / epoch | epochs run |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['val_loss']:.4f} | {r['delta_m']:+.2f} | {r['s_per_epoch']:.3f} | {r['epochs']:.0f} |")


if __name__ == "__main__":
    main()
