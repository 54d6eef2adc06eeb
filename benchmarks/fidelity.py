"""Fidelity of Grad-TAG against ground truth (really fine-tuning θ*), on planted and digits.

For each dataset, `validate`: Grad-TAG vs really fine-tuning θ* on held-out subsets (relative
error of the per-(subset, task) validation losses, rank agreement, seconds of each and their
ratio, a linearization check). planted uses the bottleneck model (affinity.defaults.BOTTLENECK),
on which fine-tuning θ* shows its groups. What a grouping buys is benchmarks/outcome.py's.

    python benchmarks/fidelity.py [--quick] [--out runs/fidelity]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from affinity.defaults import BOTTLENECK, BUILTIN_JOBS
from affinity.manifest import parse_manifest
from affinity.validation import validate


def cases(quick: bool) -> dict[str, dict]:
    planted = json.loads(json.dumps({**BUILTIN_JOBS["planted"], **BOTTLENECK}))
    digits = json.loads(json.dumps(BUILTIN_JOBS["digits"]))
    if not quick:
        planted["dataset"]["params"].update({"tasks": 32, "groups": 8})
        planted["estimation"] = {**planted["estimation"], "num_subsets": 800, "subset_size": 5}
    return {"planted": planted, "digits": digits}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the built-in jobs as they are, fewer held-out subsets")
    ap.add_argument("--out", type=Path, default=Path("runs/fidelity"))
    args = ap.parse_args()
    held = 30 if args.quick else 100
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, held-out subsets {held}")
    for name, raw in cases(args.quick).items():
        manifest = parse_manifest(raw)
        t0 = time.perf_counter()
        v = validate(manifest, held, args.out / name)
        print(f"\n== {name}: {v['estimator']['num_subsets']} held-out subsets of {v['subset_size']}, "
              f"d = {v['estimator']['projection_dim']}, p = {v['estimator']['n_params']}, l2 = {v['estimator']['l2']}")
        print(f"base model: best epoch {v['base_model']['best_epoch']}, mean val loss {v['base_model']['mean_val_loss']:.4f}, "
              f"{v['base_training_seconds']:.1f} s")
        print(f"median rel error {v['median_rel_error']:.4f}, mean rel error {v['mean_rel_error']:.4f}, "
              f"spearman {v['spearman']:.3f}, pair spearman {v['pair_spearman']:.3f}")
        print(f"grad-tag {v['gradtag_seconds']:.2f} s (gradients {v['gradtag_gradient_seconds']:.2f} s), "
              f"exact {v['exact_seconds']:.2f} s, time ratio {v['time_ratio']:.4f}")
        lin = v["linearization"]
        print("linearization (network at θ*+Pw vs linear): output gap "
              + ", ".join(f"{r['output_gap']:.4f}/{r['output_change_network']:.4f}" for r in lin)
              + " (gap/change); loss network vs linear "
              + ", ".join(f"{r['loss_network']:.4f}/{r['loss_linear']:.4f}" for r in lin))
        print(f"({time.perf_counter() - t0:.0f} s for {name})")


if __name__ == "__main__":
    main()
