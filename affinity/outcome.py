"""What the advice buys, on rows nobody selected on: train the recommended groups and the baselines.

Protocol (the measure of the task-grouping literature: TAG, Standley et al.): a share of the rows
(``dataset.test_fraction``, 0.2 when the manifest has none) is held out as test rows before
anything else; base model, affinity, candidate checks and k all use the training and validation
rows only. Then one model per group is trained from scratch exactly as the user would (the
manifest's architecture, initialization seed, loss, optimizer and early stopping on validation)
for the recommendation of each estimator and for the baselines — one model for all tasks, one
model per task, random partitions of the recommendation's group sizes, and the dataset's planted
grouping where it has one — and every task is scored on its test rows. Reported: summed test
losses, the recommendation's percentile among the random partitions (share of them it beats),
its regret against the best of one-for-all, one-per-task and planted, and its predicted gain
over one model for all (validation) beside the measured one (test).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from affinity.advice import advise
from affinity.artifacts import atomic_write_json, truth_report
from affinity.estimators import ESTIMATORS, reestimator
from affinity.group_models import train_groups
from affinity.manifest import Manifest
from affinity.pipeline import Prepared, agreement_of, context, fold_predictions_of, prepare, retrained_of
from affinity.progress import Progress

ESTIMATOR_ORDER = ("grad_tag", "scratch", "exact", "tag_lookahead", "gradient_cosine")
TEST_FRACTION = 0.2


def held_out(manifest: Manifest) -> Manifest:
    """The manifest with test rows held out (its own test_fraction, else TEST_FRACTION)."""
    if manifest.dataset.test_fraction > 0:
        return manifest
    dataset = manifest.dataset.model_copy(update={"test_fraction": TEST_FRACTION})
    return manifest.model_copy(update={"dataset": dataset})


def random_groups(sizes: list[int], n: int, seed: int) -> list[list[int]]:
    perm = np.random.default_rng(seed).permutation(n)
    out, start = [], 0
    for s in sizes:
        out.append(sorted(perm[start:start + s].tolist()))
        start += s
    return out


def _scored(prep: Prepared, manifest: Manifest, groups: list[list[int]], progress: Progress,
            stage: str, trained: dict[frozenset, tuple[np.ndarray, np.ndarray, list[float]]] | None = None,
            train_seeds: int = 1) -> dict[str, Any]:
    """Test losses of one model per group, the mean over ``train_seeds`` trainings (initialization and
    minibatch seeds training.seed, +1, …: one training's outcome varies by a few percent with its
    seed). ``trained`` memoizes by partition: the same groups (a recommendation that is one model for
    all, one per task or the planted grouping) are trained once."""
    key = frozenset(frozenset(g) for g in groups)
    if trained is not None and key in trained:
        val, test, each = trained[key]
    else:
        runs = []
        for s in range(train_seeds):
            training = manifest.training.model_copy(update={"seed": manifest.training.seed + s})
            runs.append(train_groups(prep.data, prep.tensors, manifest.model_copy(update={"training": training}),
                                     groups, progress, prep.backend, stage=stage))
        val, test = np.mean([r[0] for r in runs], axis=0), np.mean([r[1] for r in runs], axis=0)
        each = [float(r[1].sum()) for r in runs]
        if trained is not None:
            trained[key] = (val, test, each)
    names = prep.data.task_names
    return {"groups": [[names[i] for i in g] for g in groups], "k": len(groups),
            "sum_val_loss": float(val.sum()), "sum_test_loss": float(test.sum()),
            "per_task_test_loss": dict(zip(names, test.tolist())), "train_seeds": train_seeds,
            "seed_test_losses": each}


def score_candidates_of(prep: Prepared, manifest: Manifest, candidates: list[dict[str, Any]], progress: Progress,
                        trained: dict[frozenset, tuple[np.ndarray, np.ndarray, list[float]]], train_seeds: int,
                        name: str) -> None:
    """Every candidate grouping the advice checked, trained and scored on the test rows: each record gains
    ``test_loss`` (the mean over the trainings) and ``seed_test_losses`` (each training's)."""
    index = {t: i for i, t in enumerate(prep.data.task_names)}
    for c in candidates:
        scored = _scored(prep, manifest, [[index[t] for t in g] for g in c["groups"]], progress,
                         f"candidate k = {c['k']} of {name}", trained, train_seeds)
        c["test_loss"], c["seed_test_losses"] = scored["sum_test_loss"], scored["seed_test_losses"]


def baselines(prep: Prepared, manifest: Manifest, progress: Progress,
              trained: dict[frozenset, tuple[np.ndarray, np.ndarray, list[float]]], train_seeds: int) -> dict[str, Any]:
    """One model for all, one model per task and (where the data has one) the planted grouping, scored."""
    data, n = prep.data, prep.data.n_tasks
    index = {t: i for i, t in enumerate(data.task_names)}
    rows = {"one_model_for_all": _scored(prep, manifest, [list(range(n))], progress, "one model for all", trained,
                                         train_seeds),
            "one_model_per_task": _scored(prep, manifest, [[i] for i in range(n)], progress, "one model per task",
                                          trained, train_seeds)}
    if data.truth_groups:
        rows["planted"] = _scored(prep, manifest, [[index[t] for t in g] for g in data.truth_groups], progress,
                                  "planted groups", trained, train_seeds)
    return rows


def random_losses(prep: Prepared, manifest: Manifest, groups: list[list[str]], progress: Progress,
                  random_seeds: int, train_seeds: int) -> list[float]:
    """Summed test losses of ``random_seeds`` random partitions of the sizes of ``groups`` (none for one model
    for all or one per task)."""
    n = prep.data.n_tasks
    sizes = sorted((len(g) for g in groups), reverse=True)
    if not 1 < len(sizes) < n:
        return []
    return [_scored(prep, manifest, random_groups(sizes, n, seed=manifest.grouping.seed + 1000 + s), progress,
                    f"random partition {s + 1}/{random_seeds}", train_seeds=train_seeds)["sum_test_loss"]
            for s in range(random_seeds)]


def evaluate(manifest: Manifest, out_dir: Path | None = None, progress: Progress | None = None,
             random_seeds: int = 20, estimators: tuple[str, ...] | None = None,
             train_seeds: int = 1, score_candidates: bool = False) -> dict[str, Any]:
    """The held-out outcome of each estimator's recommendation and of the baselines (module docstring);
    every grouping's test loss is the mean over ``train_seeds`` trainings. ``score_candidates``: also
    the test loss of every candidate grouping the advice checked (each candidate's record gains
    ``test_loss``), so any choice rule can be replayed on the recorded numbers
    (``benchmarks/outcome.py --replay``) and the best candidate read beside the chosen one."""
    progress = progress or Progress()
    manifest = held_out(manifest)
    estimators = estimators or (manifest.estimation.method,)
    t_start = time.perf_counter()
    prep = prepare(manifest, progress, record_lookahead="tag_lookahead" in estimators)
    ctx = context(prep, manifest, progress)
    data = prep.data
    names, n = data.task_names, data.n_tasks
    rows: dict[str, Any] = {}
    trained: dict[frozenset, tuple[np.ndarray, np.ndarray, list[float]]] = {}
    advice: dict[str, Any] = {}
    estimator_seconds: dict[str, float] = {}
    predictions = agreement_of(prep, manifest)  # θ*'s, the same for every estimator
    folds_of = fold_predictions_of(prep, manifest, progress)  # θ* without each check fold, trained when first asked
    for name in estimators:
        t0 = time.perf_counter()
        est = ESTIMATORS[name](ctx)
        grouping, record = advise(est.matrix, est, data, prep.tensors, manifest, prep.training.task_val_loss,
                                  progress, prep.backend, reestimator(ctx, name), predictions,
                                  retrained_of(prep, manifest, progress), folds_of)
        estimator_seconds[name] = time.perf_counter() - t0
        advice[name] = {key: record[key] for key in ("k", "recommendation", "verdict", "predicted_gain",
                                                      "candidates", "reliability", "random_control",
                                                      "agreement_check")}
        rows[name] = _scored(prep, manifest, [list(g) for g in grouping.groups], progress, f"outcome of {name}",
                             trained, train_seeds)
        rows[name]["truth"] = truth_report(names, np.asarray(grouping.labels), data.truth_groups)
        if score_candidates:
            score_candidates_of(prep, manifest, advice[name]["candidates"], progress, trained, train_seeds, name)
    rows.update(baselines(prep, manifest, progress, trained, train_seeds))
    randoms = random_losses(prep, manifest, rows[estimators[0]]["groups"], progress, random_seeds, train_seeds)
    report = {"tasks": names, "test_fraction": manifest.dataset.test_fraction, "train_seeds": train_seeds,
              "manifest": manifest.model_dump(mode="json"), "groupings": rows, "advice": advice,
              "estimator_seconds": estimator_seconds,
              "random_test_losses": randoms, "truth": data.truth_groups,
              "summary": {name: outcome_summary(rows, name, randoms, advice.get(name)) for name in estimators},
              "seconds": time.perf_counter() - t_start}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "evaluation.json", report)
        bar_chart(report, out_dir / "evaluation.png", n)
    return report


def outcome_summary(rows: dict[str, Any], name: str, randoms: list[float],
                    advice: dict[str, Any] | None) -> dict[str, Any]:
    """Test loss of one estimator's recommendation against the baselines."""
    rec = rows[name]["sum_test_loss"]
    together = rows["one_model_for_all"]["sum_test_loss"]
    alone = rows["one_model_per_task"]["sum_test_loss"]
    planted = rows["planted"]["sum_test_loss"] if "planted" in rows else None
    best = min(v for v in (together, alone, planted) if v is not None)
    out = {"k": rows[name]["k"], "test_loss": rec, "one_model_for_all": together, "one_model_per_task": alone,
           "planted": planted, "random_median": float(np.median(randoms)) if randoms else None,
           "percentile": float(np.mean([rec < r for r in randoms])) if randoms else None,
           "regret": (rec - best) / best,
           "vs_one_for_all": (rec - together) / together, "vs_one_per_task": (rec - alone) / alone,
           "measured_gain": (together - rec) / together,
           "predicted_gain": advice.get("predicted_gain") if advice else None,
           "recommendation": advice.get("recommendation") if advice else None}
    candidates = (advice or {}).get("candidates") or []
    if candidates and all("test_loss" in c for c in candidates):  # scored on test rows (score_candidates)
        keys = ("k", "source", "predicted_val_loss", "fold_gains", "seed_sd", "test_loss", "seed_test_losses")
        out["candidates"] = [{key: c[key] for key in keys if key in c} for c in candidates]
    if planted is not None and planted < together:
        out["gap_closed"] = (together - rec) / (together - planted)
    return out


def bar_chart(report: dict[str, Any], path: Path, n_tasks: int) -> None:
    from affinity.plots import plt, save_figure

    rows = report["groupings"]
    labels = list(rows)
    values = [rows[k]["sum_test_loss"] for k in labels]
    randoms = report["random_test_losses"]
    if randoms:
        labels.append("random (median)")
        values.append(float(np.median(randoms)))
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = ["tab:blue" if k in ESTIMATOR_ORDER else "tab:gray" for k in labels]
    ax.bar(labels, values, color=colors)
    if randoms:
        lo, hi = np.percentile(randoms, [10, 90])
        i = len(labels) - 1
        ax.errorbar([i], [values[i]], yerr=[[values[i] - lo], [hi - values[i]]], color="black", capsize=4)
    ax.set_ylabel(f"sum of test losses over {n_tasks} tasks (lower is better)")
    ax.set_title("Grouping outcome on held-out rows: one model per group, trained from scratch")
    ax.tick_params(axis="x", rotation=30)
    ax.set_ylim(min(values) * 0.95, max(values) * 1.02)
    fig.tight_layout()
    save_figure(fig, path)
