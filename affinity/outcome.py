"""What a grouping buys: train one model per group from scratch and sum the tasks' validation losses.

Groupings compared (the measure of the task-grouping literature: TAG, Standley et al.):
one per affinity estimator (clustered with the manifest's grouping settings; estimators other
than Grad-TAG use Grad-TAG's number of groups so that all spend the same budget), and the
baselines "one model for all tasks", "one model per task" and "random groups of the same sizes
as Grad-TAG's" over several seeds. Every group model is trained exactly like the base model
(same architecture, initialization seed, loss, optimizer and early stopping), all groups of a
grouping stacked and trained together.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from affinity.artifacts import atomic_write_json
from affinity.estimators import ESTIMATORS
from affinity.finetune import finetune_subsets
from affinity.manifest import Manifest
from affinity.models import build_model
from affinity.pipeline import Prepared, context, group_tasks, prepare
from affinity.progress import Progress

ESTIMATOR_ORDER = ("grad_tag", "exact", "tag_lookahead", "gradient_cosine")


def train_groups(prep: Prepared, manifest: Manifest, groups: list[list[int]], progress: Progress) -> np.ndarray:
    """Validation loss of every task when trained (from scratch) with the other tasks of its group."""
    fresh = build_model(manifest.model, prep.data.X.shape[1], prep.data.n_tasks, manifest.training.seed)
    fresh = fresh.to(prep.device)
    losses = finetune_subsets(fresh, prep.tensors, [tuple(g) for g in groups], manifest.training,
                              manifest.estimation.exact_batch, progress, prep.backend, stage="group models")
    per_task = np.full(prep.data.n_tasks, np.nan)
    for g, row in zip(groups, losses):
        per_task[list(g)] = row[:len(g)]
    return per_task


def random_groups(sizes: list[int], n: int, seed: int) -> list[list[int]]:
    perm = np.random.default_rng(seed).permutation(n)
    out, start = [], 0
    for s in sizes:
        out.append(sorted(perm[start:start + s].tolist()))
        start += s
    return out


def evaluate(manifest: Manifest, out_dir: Path | None = None, progress: Progress | None = None,
             random_seeds: int = 5, estimators: tuple[str, ...] = ESTIMATOR_ORDER) -> dict[str, Any]:
    progress = progress or Progress()
    prep = prepare(manifest, progress, record_lookahead="tag_lookahead" in estimators)
    ctx = context(prep, manifest, progress)
    names = prep.data.task_names
    n = prep.data.n_tasks
    groupings: dict[str, list[list[int]]] = {}
    estimator_seconds: dict[str, float] = {}
    k = None
    for name in estimators:
        t0 = time.perf_counter()
        est = ESTIMATORS[name](ctx)
        estimator_seconds[name] = time.perf_counter() - t0
        spec = manifest.grouping if k is None else manifest.grouping.model_copy(update={"k": k})
        grouping = group_tasks(est.matrix, spec)
        k = k if k is not None else grouping.k
        groupings[name] = [list(g) for g in grouping.groups]
    reference = groupings[estimators[0]]
    sizes = sorted((len(g) for g in reference), reverse=True)
    groupings["one_model_for_all"] = [list(range(n))]
    groupings["one_model_per_task"] = [[i] for i in range(n)]
    for s in range(random_seeds):
        groupings[f"random_{s}"] = random_groups(sizes, n, seed=manifest.grouping.seed + 1000 + s)
    rows: dict[str, Any] = {}
    for name, groups in groupings.items():
        t0 = time.perf_counter()
        per_task = train_groups(prep, manifest, groups, progress)
        rows[name] = {
            "groups": [[names[i] for i in g] for g in groups],
            "per_task_val_loss": dict(zip(names, per_task.tolist())),
            "sum_val_loss": float(per_task.sum()),
            "seconds": time.perf_counter() - t0,
        }
    random_sums = [rows[f"random_{s}"]["sum_val_loss"] for s in range(random_seeds)]
    summary = {name: rows[name]["sum_val_loss"] for name in rows if not name.startswith("random_")}
    summary["random_mean"] = float(np.mean(random_sums)) if random_sums else None
    summary["random_std"] = float(np.std(random_sums)) if random_sums else None
    report = {"k": k, "tasks": names, "summary": summary, "groupings": rows,
              "estimator_seconds": estimator_seconds,
              "truth": prep.data.truth_groups}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "evaluation.json", report)
        bar_chart(summary, out_dir / "evaluation.png", n)
    return report


def bar_chart(summary: dict[str, float | None], path: Path, n_tasks: int) -> None:
    from affinity.plots import plt, save_figure

    items = [(k, v) for k, v in summary.items() if v is not None and k != "random_std"]
    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [k for k, _ in items]
    values = [v for _, v in items]
    colors = ["tab:blue" if k in ESTIMATOR_ORDER else "tab:gray" for k in labels]
    ax.bar(labels, values, color=colors)
    if summary.get("random_std"):
        i = labels.index("random_mean")
        ax.errorbar([i], [values[i]], yerr=[summary["random_std"]], color="black", capsize=4)
    ax.set_ylabel(f"sum of validation losses over {n_tasks} tasks (lower is better)")
    ax.set_title("Grouping outcome: one model per group, trained from scratch")
    ax.tick_params(axis="x", rotation=30)
    lo = min(values)
    ax.set_ylim(lo * 0.95, max(values) * 1.02)
    fig.tight_layout()
    save_figure(fig, path)
