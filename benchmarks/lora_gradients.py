"""Projected per-sample LoRA gradients per second, against a per-sample autograd loop, in one run.

The model is the built-in text job's (examples/text.json): the packaged all-MiniLM-L6-v2 with
LoRA adapters (rank 8 on query and value) and one head per task, its LoRA B matrices moved off
their zero initialization (so that every adapter parameter has a gradient), in eval mode; the
rows are the built-in `text` dataset's token ids. Gradients are taken over the LoRA parameters
(``estimation.params = encoder``, p = 73,728) and projected to d = 200 with the same P on every
side.

- ours: ``gradient_shard`` as Grad-TAG runs it (chunks of ``--chunk`` pairs; per chunk one
  batched forward + backward, the adapters' per-sample gradients as sums over positions of outer
  products, then the block projection);
- torch.func: the same chunks through ``vmap(grad(...))`` of ``functional_call`` (the general
  path, over the trainable parameters only);
- loop: per pair one forward of that row alone and ``torch.autograd.grad`` over the same
  parameters, the flattened gradients projected together at the end.

Each side is warmed up on one chunk (not timed); the three agree to float32 rounding (printed).

    python benchmarks/lora_gradients.py [--pairs 256] [--loop-pairs 64] [--chunk 64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from affinity.defaults import builtin_manifest
from affinity.gradients import gradient_shard, labelled_pairs, select_parameters, vmap_per_sample_gradients
from affinity.kinds import load_data, make_model
from affinity.models import task_outputs
from affinity.projection import BlockProjector


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--loop-pairs", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    m = builtin_manifest("text")
    data = load_data(m)
    model = make_model(m.model, data, 0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    model.eval()
    spec = m.estimation
    names = select_parameters(model, spec.params)
    params = dict(model.named_parameters())
    p = sum(params[n].numel() for n in names)
    projector = BlockProjector(p, spec.projection_dim, spec.projection, spec.seed, spec.block_params,
                               torch.device("cpu"))
    X = torch.as_tensor(data.X)
    rows, tasks = labelled_pairs(data.train | data.val)
    rows, tasks = rows[:args.pairs], tasks[:args.pairs]
    print(f"model: {m.model.pretrained} + LoRA r={m.model.lora_rank}; trainable {model.trainable_counts()}; "
          f"differentiated p = {p} ({spec.params}); d = {spec.projection_dim}; tokens per text <= {X.shape[2]}; "
          f"threads {torch.get_num_threads()}")

    def ours(r, t):
        return gradient_shard(model, X, names, projector, args.chunk, (r, t))[0]

    def functorch(r, t):
        out = []
        for a in range(0, len(r), args.chunk):
            x, tt = X[torch.as_tensor(r[a:a + args.chunk])], torch.as_tensor(t[a:a + args.chunk])
            out.append(projector.project_segments(vmap_per_sample_gradients(model, names, x, tt)).float())
        return torch.cat(out).numpy()

    def loop(r, t):
        grads = []
        for i in range(len(r)):
            x = model.compact_inputs(X[int(r[i]):int(r[i]) + 1])
            out = task_outputs(model, x, torch.as_tensor(t[i:i + 1])).sum()
            g = torch.autograd.grad(out, [params[n] for n in names])
            grads.append(torch.cat([v.reshape(-1) for v in g]))
        return projector.project_segments([torch.stack(grads)]).float().numpy()

    warm = (rows[:args.chunk], tasks[:args.chunk])
    results = {}
    for label, fn, n in (("ours", ours, len(rows)), ("torch.func", functorch, len(rows)),
                         ("loop", loop, min(args.loop_pairs, len(rows)))):
        fn(*warm) if label != "loop" else fn(rows[:8], tasks[:8])
        t0 = time.perf_counter()
        feats = fn(rows[:n], tasks[:n])
        seconds = time.perf_counter() - t0
        results[label] = (n / seconds, feats)
        print(f"{label:>10}: {n} pairs in {seconds:.2f} s = {n / seconds:.1f} pairs/s")
    k = min(len(results["loop"][1]), len(results["ours"][1]))
    scale = float(np.abs(results["loop"][1]).max())
    for label in ("ours", "torch.func"):
        diff = float(np.abs(results[label][1][:k] - results["loop"][1][:k]).max())
        print(f"{label} vs loop: max |difference| of projected gradients {diff:.2e} (largest entry {scale:.2e})")
    print(f"speed-up over the per-sample autograd loop: ours {results['ours'][0] / results['loop'][0]:.1f}x, "
          f"torch.func {results['torch.func'][0] / results['loop'][0]:.1f}x (goal >= 20x)")


if __name__ == "__main__":
    main()
