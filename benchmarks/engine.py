"""Engine speed, as ratios against baselines measured in the same run.

1. Projected per-sample gradients: ours (linear layers' per-sample gradients as outer products
   from one batched backward, torch.func for the heads, chunked, block projection; float32 and
   bfloat16 products) against a per-sample Python loop of autograd backward passes and a
   projection of each flattened gradient (how the research code computes them). Both sides are
   warmed up first (one chunk of 512 pairs; the loop 64 pairs; not timed) and project with the
   same P.
2. Surrogate fits: ours (``grad_tag_table``: packing, batched L-BFGS over all subsets, and the
   validation scores) against scikit-learn ``LogisticRegression`` fitted one subset at a time
   (fits only), on the same problems (weighted L2-penalized logistic regression; no offset, since
   scikit-learn has none), at scikit-learn's default tolerance and at tol=1e-12 (our default
   stops within ~1e-13 of the optimum). Problem sets: the real ones of the built-in `planted` job
   (its θ*, projected gradients, subsets and λ), the same data with the generic default model,
   the 500-task job of ``benchmarks/scale.py``, and synthetic Gaussian features. Every surrogate
   timing (ours, scikit-learn, the products alone) is the best of 3 runs. Also printed: the 50×
   goal's budget (scikit-learn's time ÷ 50) and the share of it that the batched matrix products
   of our iterations take alone, with nothing else.

    python benchmarks/engine.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from affinity.estimate import PairData, grad_tag_table
from affinity.gradients import GradientFeatures, projected_gradients, select_parameters
from affinity.manifest import ModelSpec
from affinity.models import build_model
from affinity.projection import BlockProjector
from affinity.subsets import sample_subsets
from affinity.surrogates import fit_subsets, subset_objective
from affinity.task_blocks import pack_slots


def bench_gradients(n_pairs: int, n_tasks: int, features: int, hidden: list[int], d: int) -> dict:
    torch.manual_seed(0)
    model = build_model(ModelSpec(hidden=hidden), features, n_tasks, seed=0).eval()
    names = select_parameters(model, "all")
    params = dict(model.named_parameters())
    p = sum(params[n].numel() for n in names)
    X = torch.randn(n_pairs, features)
    rows = np.arange(n_pairs)
    tasks = np.arange(n_pairs) % n_tasks
    proj = BlockProjector(p, d, seed=0)
    P = proj.matrix()
    low = BlockProjector(p, d, seed=0, precision="bfloat16")

    def ours(projector: BlockProjector, pairs: int):
        return projected_gradients(model, X, rows[:pairs], tasks[:pairs], names, projector, chunk_rows=512,
                                   memory_mb=512)

    def loop(pairs: int) -> np.ndarray:
        out = np.empty((pairs, d), dtype=np.float32)
        for i in range(pairs):
            model.zero_grad()
            model(X[i:i + 1])[0, tasks[i]].backward()
            flat = torch.cat([params[n].grad.reshape(-1) for n in names])
            out[i] = (flat @ P).numpy()
        return out

    # Warm-up, not timed: one-time costs of a process (torch.func tracing, kernel selection, first
    # touch of the chunk-sized buffers, the bfloat16 copy of P): one full chunk each.
    ours(proj, 512), ours(low, 512), loop(64)
    t = time.perf_counter()
    feats = ours(proj, n_pairs).features
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    feats_low = ours(low, n_pairs).features
    t_low = time.perf_counter() - t
    t = time.perf_counter()
    reference = loop(n_pairs)
    t_loop = time.perf_counter() - t
    # Relative Frobenius differences. (A max-entry difference is dominated by the odd pair with a
    # ReLU pre-activation within float32 rounding of 0, whose derivative flips between the two.)
    err = float(np.linalg.norm(reference - feats) / np.linalg.norm(reference))
    err_low = float(np.linalg.norm(reference - feats_low) / np.linalg.norm(reference))
    return {"pairs": n_pairs, "params": p, "d": d, "ours_s": t_ours, "loop_s": t_loop,
            "speedup": t_loop / t_ours, "max_rel_diff": err, "bf16_s": t_low, "bf16_speedup": t_loop / t_low,
            "bf16_rel_diff": err_low}


def synthetic_problem(n_tasks: int, rows_per_task: int, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                            np.ndarray]:
    """Gaussian features (rows ~ N(0, I/d)), logistic labels from a per-task w, 70% train rows."""
    rng = np.random.default_rng(0)
    n = n_tasks * rows_per_task
    G = rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    tasks = np.repeat(np.arange(n_tasks), rows_per_task)
    w_true = rng.standard_normal((n_tasks, d)) * 2
    logits = np.einsum("nd,nd->n", G, w_true[tasks])
    y = (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(np.float64)
    is_train = np.zeros(n, dtype=bool)
    for t in range(n_tasks):
        r = np.flatnonzero(tasks == t)
        is_train[r[: int(0.7 * len(r))]] = True
    return G, tasks, y, is_train


MANY_TASKS = {  # the 500-task job of benchmarks/scale.py (its defaults)
    "dataset": {"source": "planted", "params": {"tasks": 500, "groups": 50, "rows_per_task": 40, "features": 16}},
    "model": {"hidden": [32, 1], "activation": "tanh"},
    "training": {"epochs": 20, "patience": 20, "batch_size": 512},
    "estimation": {"num_subsets": 1000, "subset_size": 20, "projection_dim": 100, "min_pair_count": 0},
}


def job_problem(manifest: str | dict = "builtin"
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, list[tuple[int, ...]], float]:
    """Real surrogate problems of a job: its θ*, projected gradients, subsets and λ.

    manifest: "builtin", the planted job with the bottleneck model (its small tanh MLP,
    affinity.defaults.BOTTLENECK); "default-model", the same data with the generic default model
    (larger gradients, worse-conditioned fits); or a manifest."""
    from affinity.defaults import bottleneck_manifest, builtin_manifest
    from affinity.estimators import grad_tag
    from affinity.manifest import Manifest
    from affinity.pipeline import prepare
    from affinity.progress import Progress

    if manifest == "builtin":
        manifest = bottleneck_manifest()
    elif manifest == "default-model":
        manifest = Manifest.model_validate({"dataset": builtin_manifest("planted").dataset.model_dump()})
    else:
        manifest = Manifest.model_validate(manifest)
    prep = prepare(manifest, Progress())
    grads = grad_tag.gradient_features(prep.model, prep.data, manifest.estimation, prep.device)
    data = prep.data
    y = np.nan_to_num(data.Y)[grads.rows, grads.tasks]
    is_train = data.train[grads.rows, grads.tasks]
    return grads.features, grads.tasks, y, is_train, data.n_tasks, prep.subsets, manifest.estimation.l2


REPEATS = 3  # every surrogate timing is the best of this many runs (the machine's timings move between runs)


def best_of(repeats: int, run):
    """The shortest wall time of ``repeats`` calls of ``run``, and its last result."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_surrogates(G: np.ndarray, tasks: np.ndarray, y: np.ndarray, is_train: np.ndarray, n_tasks: int,
                     subsets: list[tuple[int, ...]], l2: float) -> dict:
    """Ours vs scikit-learn on the same problems: one row per (row, task) pair; base output 0 for both."""
    n = len(G)
    Y = np.zeros((n, n_tasks))
    Y[np.arange(n), tasks] = y
    train = np.zeros((n, n_tasks), dtype=bool)
    train[np.arange(n), tasks] = is_train
    grads = GradientFeatures(features=G, base_output=np.zeros(n, dtype=np.float32), rows=np.arange(n),
                             tasks=tasks, n_params=G.shape[1])
    data = PairData.build(grads, Y, train, np.ones(n_tasks, dtype=bool), torch.device("cpu"), torch.float64)
    grad_tag_table(data, subsets[:8], l2)  # warm-up, not timed
    t_ours = best_of(REPEATS, lambda: grad_tag_table(data, subsets, l2))[0]

    # Ours again, keeping w and which subsets each iteration's passes carried, for the objective
    # comparison and the floor below (not timed).
    passes: list[np.ndarray] = []
    w_ours, iters = fit_subsets(data.train, subsets, l2, trace=passes)
    obj_ours = subset_objective(w_ours, data.train, subsets, l2).numpy()

    # The floor: the batched products alone that those iterations need (two passes per iteration,
    # over the subsets each iteration carried, same packs and shapes), with everything else —
    # losses, line search, L-BFGS, packing, validation scores — left out.
    packs = data.packed().train
    layouts = {}
    for active in passes:
        if active.tobytes() not in layouts:
            slots = pack_slots(packs, [subsets[a] for a in active])
            layouts[active.tobytes()] = [(s, torch.rand(s.pack.G.shape[0], s.pack.G.shape[1], s.index.shape[1]))
                                         for s in slots]
    step = torch.randn(len(subsets) + 1, G.shape[1])

    def products() -> None:
        for active in passes:
            for s, slope in layouts[active.tobytes()]:
                torch.bmm(s.pack.G, s.gather(step).transpose(1, 2))
                torch.bmm(slope.transpose(1, 2), s.pack.G)

    t_products = best_of(REPEATS, products)[0]

    train_rows = [np.flatnonzero((tasks == t) & is_train) for t in range(n_tasks)]

    def sklearn_fits(tol: float) -> np.ndarray:
        w_sk = []
        for s in subsets:
            rows = np.concatenate([train_rows[k] for k in s])
            weight = np.concatenate([np.full(len(train_rows[k]), 1 / (len(s) * len(train_rows[k]))) for k in s])
            # sklearn minimizes C·Σ s_i ℓ_i + ½‖w‖²; ours Σ weight·ℓ + (λ/2)‖w‖², so C = 1/λ, s_i = weight.
            clf = LogisticRegression(C=1 / l2, fit_intercept=False, max_iter=1000, tol=tol)
            clf.fit(G[rows].astype(np.float64), y[rows], sample_weight=weight)
            w_sk.append(clf.coef_[0])
        return subset_objective(torch.as_tensor(np.array(w_sk)), data.train, subsets, l2).numpy()

    t_sk, obj_sk = best_of(REPEATS, lambda: sklearn_fits(1e-4))  # its default
    t_tight, obj_tight = best_of(REPEATS, lambda: sklearn_fits(1e-12))  # as close to the optimum as ours
    widest = max(sum(int(is_train[tasks == t].sum()) for t in s) for s in subsets)
    return {"subsets": len(subsets), "size": max(len(s) for s in subsets), "rows_per_subset": widest,
            "d": G.shape[1], "iterations": iters, "ours_s": t_ours, "products_s": t_products, "sklearn_s": t_sk, "speedup": t_sk / t_ours,
            "objective_ours_minus_sklearn": float((obj_ours - obj_sk).max()),
            "sklearn_tight_s": t_tight, "tight_speedup": t_tight / t_ours,
            "objective_ours_minus_tight": float((obj_ours - obj_tight).max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    g = bench_gradients(n_pairs=600 if args.quick else 3000, n_tasks=20, features=64, hidden=[256, 256], d=200)
    print(f"[gradients] {g['pairs']} pairs, p = {g['params']}, d = {g['d']}: ours {g['ours_s']:.2f} s, "
          f"per-sample loop {g['loop_s']:.2f} s, speed-up {g['speedup']:.1f}x (relative difference {g['max_rel_diff']:.1e}); "
          f"bfloat16 products {g['bf16_s']:.2f} s, speed-up {g['bf16_speedup']:.1f}x "
          f"(relative difference {g['bf16_rel_diff']:.1e})")
    problems = {
        "planted, bottleneck model": job_problem(),
        "planted data, default model": job_problem("default-model"),
        "500-task job of scale.py": job_problem(MANY_TASKS),
        "synthetic": (*synthetic_problem(40, 200, 200), 40,
                      sample_subsets(40, 10, 50 if args.quick else 400, seed=0), 0.1),
    }
    for name, problem in problems.items():
        s = bench_surrogates(*problem)
        print(f"[surrogates, {name}] {s['subsets']} subsets of {s['size']} tasks (≤ {s['rows_per_subset']} rows), "
              f"d = {s['d']}: ours {s['ours_s']:.2f} s ({s['iterations']} iterations), sklearn one at a time "
              f"{s['sklearn_s']:.2f} s, speed-up {s['speedup']:.1f}x "
              f"(objective ours − sklearn, max over subsets: {s['objective_ours_minus_sklearn']:.1e}); "
              f"sklearn at tol=1e-12 {s['sklearn_tight_s']:.2f} s, speed-up {s['tight_speedup']:.1f}x "
              f"({s['objective_ours_minus_tight']:.1e}); the batched products alone {s['products_s']:.3f} s, "
              f"sklearn ÷ that {s['sklearn_s'] / s['products_s']:.0f}x; "
              f"the 50x budget (sklearn ÷ 50) {1000 * s['sklearn_s'] / 50:.1f} ms, of which the products alone take "
              f"{100 * s['products_s'] / (s['sklearn_s'] / 50):.0f}%")

if __name__ == "__main__":
    main()
