"""The outcome suite: does the advice hold on data nobody tuned for?

For every dataset and seed: the job at default settings (only the dataset section is given)
with 20% of the rows held out as test rows (and, for generated datasets, ``--test-rows`` more rows
per task drawn apart as test rows: the job's rows are unchanged), then one model per recommended
group trained from scratch and scored on the test rows, against one model for all tasks, one model per task, random
partitions of the recommended sizes and the planted grouping where there is one
(affinity/outcome.py). Prints one line per (dataset, seed) and the criteria of "advice that
holds" over the suite.

    python benchmarks/outcome.py                      # every dataset, seeds 0 1 2
    python benchmarks/outcome.py --datasets planted digits --seeds 0 --estimator grad_tag
    # the seeds side by side (one thread each), then one table:
    for s in 0 1 2; do OMP_NUM_THREADS=1 python benchmarks/outcome.py --seeds $s --out runs/outcome/$s & done; wait
    python benchmarks/outcome.py --merge runs/outcome/0 runs/outcome/1 runs/outcome/2 --out runs/outcome
    # with --candidates every candidate grouping's test loss is recorded too; a choice rule can then be
    # replayed on the recorded runs without training anything:
    python benchmarks/outcome.py --merge runs/outcome/0 runs/outcome/1 runs/outcome/2 --replay grouping.min_gain=0.01
    # or the recorded candidates checked again under other check settings (trains only the check's models):
    python benchmarks/outcome.py --merge runs/outcome/0 --recheck --set grouping.folds=5 'grouping.check_stop="fold"' \
        --out runs/recheck/0
    # or the recorded advice, candidates and baselines trained again on the run's rows and scored on more test
    # rows drawn apart (generated sources; the job is not rerun), then replayed:
    python benchmarks/outcome.py --merge runs/outcome_text/1 --rescore --test-rows 300 --train-seeds 1 --random 5 \
        --out runs/rescore/1
    python benchmarks/outcome.py --merge runs/rescore/1 --replay
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affinity.choice import choose_k_from, fold_gains, selection_gain, size_of
from affinity.group_check import FoldScores
from affinity.defaults import BUILTIN_JOBS
from affinity.manifest import GroupingSpec, parse_manifest
from affinity.outcome import ESTIMATOR_ORDER, evaluate


def synthetic(mechanism: str, **params: Any):
    return lambda seed: {"source": "synthetic", "params": {"mechanism": mechanism, "seed": seed, **params}}


# Synthetic tasks label 150 rows each (120 training and validation rows after the 20% held out), few enough
# that pooling a group's rows pays; shared_rows labels 300 rows for every task.
DATASETS: dict[str, Any] = {
    "planted": lambda seed: {"source": "planted", "params": {"seed": seed}},
    "pooling": synthetic("pooling", rows_per_task=150),
    "conflict": synthetic("conflict", rows_per_task=150),
    "mixed": synthetic("mixed", rows_per_task=150),
    "regression": synthetic("regression", rows_per_task=150),
    "shared_rows": synthetic("shared_rows", rows_per_task=300),
    "unrelated": synthetic("unrelated", rows_per_task=150),
    "digits": lambda seed: {"source": "digits", "params": {"label_fraction": 0.5, "seed": seed}},
    "yeast": lambda seed: {"source": "yeast", "params": {"seed": seed}},
    "text": lambda seed: {"source": "text", "params": {"seed": seed}},
    "graph": lambda seed: {"source": "graph", "params": {"seed": seed}},
}
# The text job also names its model, training and estimator (MiniLM with LoRA, affinity/defaults.py). It
# trains a transformer for every grouping it scores, so it runs when named (--datasets text), not by default.
# The graph job (120 community tasks, SIGN, Grad-TAG) names its sections too; scoring one model per task means 120
# models per training seed, so it also runs when named (--datasets graph).
JOB_SECTIONS: dict[str, dict[str, Any]] = {name: {k: v for k, v in BUILTIN_JOBS[name].items() if k != "dataset"}
                                           for name in ("text", "graph")}
BY_DEFAULT = [name for name in DATASETS if name not in ("text", "graph")]
# Sources that draw more rows of the same tasks on request (dataset.params.test_rows_per_task): their rows are
# scored on --test-rows extra rows per task besides the 20% held out, so that a grouping's measured gain is
# read to a fraction of a pp (30 test rows per task leave it ±1–2 pp; the text job's 6 per task, several pp).
# digits and yeast have only their rows.
GENERATED = ("planted", "synthetic", "text")


def manifest_for(name: str, seed: int, overrides: dict[str, Any], test_rows: int = 0) -> Any:
    """The row's manifest; ``test_rows`` more rows per task as test rows where the source generates them."""
    raw: dict[str, Any] = {k: dict(v) for k, v in JOB_SECTIONS.get(name, {}).items()}
    raw["dataset"] = {**DATASETS[name](seed), "seed": seed}
    if test_rows and raw["dataset"]["source"] in GENERATED:
        raw["dataset"]["params"] = {**raw["dataset"]["params"], "test_rows_per_task": test_rows}
    raw["training"] = {**raw.get("training", {}), "seed": seed}
    for section, values in overrides.items():
        raw[section] = {**raw.get(section, {}), **values}
    return parse_manifest(raw)


def settings(items: list[str]) -> dict[str, dict[str, Any]]:
    """Manifest overrides from ``SECTION.KEY=JSON`` items, by section."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, field = key.partition(".")
        if not (sep and dot and field):
            raise SystemExit(f"{item}: give SECTION.KEY=JSON, e.g. grouping.min_gain=0.01")
        try:
            out.setdefault(section, {})[field] = json.loads(value)
        except json.JSONDecodeError:
            raise SystemExit(f"{item}: the value is not JSON (a string needs quotes: 'grouping.check_stop=\"fold\"')") \
                from None
    return out


def fmt(v: float | None, spec: str = ".3f") -> str:
    return "—" if v is None else format(v, spec)


def keyed(candidates: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    """Candidates by their advice key: k, or (k, "outputs") for the output agreement's grouping at a k where
    the affinity's is a candidate too (``grouping.candidates_from: both``)."""
    ks = [c["k"] for c in candidates]
    return {(c["k"], c["source"]) if ks.count(c["k"]) > 1 and c.get("source") == "outputs" else c["k"]: c
            for c in candidates}


def output_keys(candidates: dict[Any, dict[str, Any]]) -> set[Any]:
    """The keys (``keyed``) of the output agreement's candidates: the splits ``grouping.split_vs_alone_se`` holds."""
    return {kk for kk, c in candidates.items() if c.get("source") == "outputs"}


def replayed(row: dict[str, Any], spec: GroupingSpec, selection: bool = True) -> dict[str, Any]:
    """The row as the choice rule ``spec`` would have had it, from its recorded candidates (their predicted
    losses, per-fold gains and test losses: ``--candidates``). The predicted gain is the chosen candidate's
    own (over all folds). The selection check (``selection_gain``: a choice that loses on the folds it was not made
    on gives way to ``without_split``'s answer) is replayed from the per-fold gains, the folds weighted equally
    (the check weights them by their rows, which differ by at most one row per task); the random control, which
    needs models the record does not hold, is not (``selection`` False: neither). The percentile among random
    partitions is kept only when the replayed k is the recorded one (the random partitions have the recorded
    sizes)."""
    if "candidates" not in row:
        raise SystemExit(f"{row['dataset']} seed {row['seed']}: no candidate test losses recorded (run with --candidates)")
    cands = keyed(row["candidates"])
    reference = cands[1]["predicted_val_loss"]
    totals = {kk: c["predicted_val_loss"] for kk, c in cands.items()}
    per_fold = {kk: c["fold_gains"] for kk, c in cands.items()}
    n, outputs = row.get("n_tasks"), output_keys(cands)
    k = choose_k_from(totals, reference, per_fold, spec, n=n, outputs=outputs)
    if selection and k != 1:
        folds = len(per_fold[1])
        # each fold's total loss relative to one model for all's, spread over the n tasks (choose reads n there)
        scores = {kk: FoldScores(np.repeat((1.0 - np.asarray(g, dtype=float))[:, None] / n, n, axis=1),
                                 np.ones((folds, n))) for kk, g in per_fold.items()}
        if not selection_gain(scores, cands, spec, outputs)["holds"]:
            k = choose_k_from({kk: totals[kk] for kk in (1, n) if kk in totals and kk != k}, reference, per_fold,
                              spec, n=n, outputs=outputs)
    rec, together, alone = cands[k]["test_loss"], row["one_model_for_all"], row["one_model_per_task"]
    best = min(v for v in (together, alone, row["planted"]) if v is not None)
    out = {**row, "k": k, "test_loss": rec, "regret": (rec - best) / best,
           "vs_one_for_all": (rec - together) / together, "vs_one_per_task": (rec - alone) / alone,
           "measured_gain": (together - rec) / together,
           "predicted_gain": (reference - cands[k]["predicted_val_loss"]) / reference,
           "recommendation": "together" if k == 1 else ("separately" if k == row.get("n_tasks") else "groups")}
    k = size_of(k)
    out["k"] = k
    if k != row["k"] or rec != row["test_loss"]:
        out["percentile"] = out["random_median"] = None
    if row.get("gap_closed") is not None:
        out["gap_closed"] = (together - rec) / (together - row["planted"])
    return out


def recorded_evaluation(row: dict[str, Any], runs: list[Path]) -> Path:
    """The evaluation.json of ``row`` in the first of ``runs`` that holds it."""
    from check_fidelity import evaluation_path

    path = next((p for p in (evaluation_path(run, row["dataset"], row["seed"]) for run in runs) if p.exists()), None)
    if path is None:
        raise SystemExit(f"{row['dataset']} seed {row['seed']}: no evaluation.json under {[str(r) for r in runs]}")
    return path


def rechecked(row: dict[str, Any], runs: list[Path], overrides: dict[str, Any],
              save: Path | None = None) -> dict[str, Any]:
    """The row with its candidates checked again under ``overrides`` (benchmarks/check_fidelity.py) and k
    re-chosen by that check's own choice rule; test losses are the recorded ones."""
    from check_fidelity import recheck

    advice, m, scores, _ = recheck(recorded_evaluation(row, runs), row["dataset"], row["seed"], overrides)
    cands = advice["candidates"]
    if save is not None:  # every candidate's per-fold task losses, for choice rules that need more than totals
        save.mkdir(parents=True, exist_ok=True)
        name = {key: "_".join(map(str, key)) if isinstance(key, tuple) else str(key) for key in scores}
        np.savez(save / f"{row['dataset']}_{row['seed']}_scores.npz",
                 **{f"loss_{name[k]}": s.loss for k, s in scores.items()},
                 **{f"rows_{name[k]}": s.rows for k, s in scores.items()})
    ref = scores[1].total()
    row = {**row, "candidates": [{**c, "predicted_val_loss": scores[key].total(),
                                  "fold_gains": fold_gains(scores[key], scores[1])} for key, c in keyed(cands).items()]}
    out = replayed(row, m.grouping)
    print(f"  rechecked {row['dataset']} seed {row['seed']}: k {row.get('k')} -> {out['k']} "
          f"(reference {ref:.3f})", flush=True)
    return out


def run_manifest(report: dict[str, Any], dataset: str, seed: int, overrides: dict[str, Any],
                 test_rows: int | None = None) -> Any:
    """The manifest a recorded run was evaluated under (its evaluation.json's "manifest"; the suite's manifest of the
    row where the file has none), with ``overrides`` on top and, unless None, ``test_rows`` more test rows per task."""
    from affinity.outcome import held_out

    recorded = report.get("manifest")
    if recorded is None:
        print(f"  {dataset} seed {seed}: no manifest recorded; the suite's defaults with --set", flush=True)
        return held_out(manifest_for(dataset, seed, overrides, test_rows or 0))
    raw = {section: dict(values) if isinstance(values, dict) else values for section, values in recorded.items()}
    if test_rows is not None and raw["dataset"]["source"] in GENERATED:
        raw["dataset"]["params"] = {**(raw["dataset"].get("params") or {}), "test_rows_per_task": test_rows}
    for section, values in overrides.items():
        raw[section] = {**raw.get(section, {}), **values}
    return held_out(parse_manifest(raw))


def rescored(row: dict[str, Any], runs: list[Path], test_rows: int, random: int, train_seeds: int,
             save: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The row with its recorded advice (choice and candidates) and its baselines trained again and scored on
    ``test_rows`` more test rows per task drawn apart (generated sources only): the job's training and
    validation rows are the recorded run's, so only the test side changes; the settings are the run's own
    (``run_manifest``), ``overrides`` on top. Writes save/DATASET_SEED/evaluation.json (for --replay and
    --recheck)."""
    from affinity.compute import make_backend
    from affinity.devices import resolve_device
    from affinity.kinds import load_data
    from affinity.outcome import _scored, baselines, outcome_summary, random_losses, score_candidates_of
    from affinity.pipeline import Prepared
    from affinity.progress import Progress
    from affinity.training import TensorData

    path = recorded_evaluation(row, runs)
    report = json.loads(path.read_text())
    m = run_manifest(report, row["dataset"], row["seed"], overrides or {}, test_rows)
    if not (m.dataset.params or {}).get("test_rows_per_task"):
        raise SystemExit(f"--rescore: {row['dataset']} does not draw test rows apart (sources {GENERATED}); "
                         "give --test-rows N > 0")
    t0 = time.perf_counter()
    name, advice = next(iter(report["advice"].items()))
    data = load_data(m)
    device = resolve_device(m.training.device)
    # the data alone: the scoring trains each grouping from scratch and reads neither θ* nor the subsets
    prep = Prepared(data, TensorData.from_split(data, device), None, None, [], device, None, {},
                    make_backend(m.compute))
    index, progress = {t: i for i, t in enumerate(data.task_names)}, Progress()
    trained: dict[frozenset, Any] = {}
    recommended = [[index[t] for t in g] for g in report["groupings"][name]["groups"]]
    rows = {name: _scored(prep, m, recommended, progress, "recommendation", trained, train_seeds),
            **baselines(prep, m, progress, trained, train_seeds)}
    score_candidates_of(prep, m, advice["candidates"], progress, trained, train_seeds, name)
    randoms = random_losses(prep, m, rows[name]["groups"], progress, random, train_seeds)
    out_dir = save / f"{row['dataset']}_{row['seed']}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(
        {**report, "manifest": m.model_dump(mode="json"), "groupings": rows, "advice": {name: advice},
         "random_test_losses": randoms, "test_fraction": m.dataset.test_fraction, "train_seeds": train_seeds},
        indent=1))
    summary = outcome_summary(rows, name, randoms, advice)
    return {"dataset": row["dataset"], "seed": row["seed"], "n_tasks": data.n_tasks, "extra_test_rows": test_rows,
            **summary, "seconds": time.perf_counter() - t0}


def criteria(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The done-when criteria of the advice, over all (dataset, seed) rows."""
    within_all = [r["vs_one_for_all"] <= 0.01 for r in rows]
    within_alone = [r["vs_one_per_task"] <= 0.01 for r in rows]
    split = [r["percentile"] > 0.5 for r in rows if r["percentile"] is not None]
    gaps: dict[str, list[float]] = {}
    for r in rows:
        if r.get("gap_closed") is not None:
            gaps.setdefault(r["dataset"], []).append(r["gap_closed"])
    errors = [abs(r["predicted_gain"] - r["measured_gain"]) for r in rows if r["predicted_gain"] is not None]
    return {
        "within_1pct_of_one_for_all": f"{sum(within_all)}/{len(rows)}",
        "within_1pct_of_one_per_task": f"{sum(within_alone)}/{len(rows)}",
        "beats_median_random_when_split": f"{sum(split)}/{len(split)}",
        "median_gap_closed": {d: float(np.median(g)) for d, g in gaps.items()},
        "median_abs_gain_error_pp": 100 * float(np.median(errors)) if errors else None,
        # the best candidate the advice checked, by test loss: what a perfect choice among them would get
        "best_candidate_regret": {f"{r['dataset']}_{r['seed']}": round(min(c["test_loss"] for c in r["candidates"])
                                                                         / r["test_loss"] - 1, 4)
                                  for r in rows if "candidates" in r},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="*", default=None, choices=list(DATASETS),
                    help=f"default: {' '.join(BY_DEFAULT)}; with --merge, only these rows of the recorded runs")
    ap.add_argument("--seeds", nargs="*", type=int, default=None,
                    help="default: 0 1 2; with --merge, only these rows of the recorded runs")
    ap.add_argument("--estimator", default=None, choices=ESTIMATOR_ORDER,
                    help="estimation.method (default: the product's default)")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=JSON",
                    help="override a manifest setting, e.g. estimation.l2=1.0 grouping.min_gain=0.02")
    ap.add_argument("--random", type=int, default=20, help="random partitions per (dataset, seed)")
    ap.add_argument("--train-seeds", type=int, default=3,
                    help="trainings per grouping (training seeds); a grouping's test loss is their mean")
    ap.add_argument("--test-rows", type=int, default=500,
                    help="extra test rows per task for generated datasets (planted, synthetic, text); 0: only the 20%% "
                         "held out")
    ap.add_argument("--candidates", action="store_true",
                    help="also train and score every candidate grouping the advice checked (for --replay)")
    ap.add_argument("--replay", nargs="*", default=None, metavar="grouping.KEY=JSON",
                    help="with --merge: re-choose k from the recorded candidates with these grouping settings")
    ap.add_argument("--replay-without-selection", action="store_true",
                    help="with --replay: re-choose k from the candidates alone, without re-running the selection check")
    ap.add_argument("--recheck", action="store_true",
                    help="with --merge DIRS: check every row's recorded candidates again under the run's recorded "
                         "settings with --set's on top (same training and validation rows; trains only the check's "
                         "models) and re-choose k")
    ap.add_argument("--rescore", action="store_true",
                    help="with --merge DIRS: train every row's recorded advice, candidates and baselines again and "
                         "score them on --test-rows more test rows per task (generated sources; the job is not rerun), "
                         "under the run's recorded settings with --set's on top")
    ap.add_argument("--out", type=Path, default=Path("runs/outcome"))
    ap.add_argument("--merge", nargs="*", type=Path, default=None, metavar="DIR",
                    help="print the table and criteria of earlier runs' DIR/outcome.json (e.g. one per seed, "
                         "run side by side) instead of running")
    args = ap.parse_args()
    if (args.recheck or args.rescore or args.replay is not None) and not args.merge:
        ap.error("--recheck, --rescore and --replay work on recorded runs: give them with --merge DIR [DIR ...]")
    overrides = settings(args.set)
    if args.estimator:
        overrides.setdefault("estimation", {})["method"] = args.estimator
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, overrides {overrides or 'none'}")
    print(HEADER)
    rows = []
    if args.merge:
        for path in args.merge:
            rows += [r for r in json.loads((path / "outcome.json").read_text())["rows"]
                     if (args.datasets is None or r["dataset"] in args.datasets)
                     and (args.seeds is None or r["seed"] in args.seeds)]
        rows.sort(key=lambda r: (list(DATASETS).index(r["dataset"]), r["seed"]))
        if args.rescore:
            rows = [rescored(r, args.merge, args.test_rows, args.random, args.train_seeds, args.out, overrides)
                    for r in rows]
        if args.recheck:
            rows = [rechecked(r, args.merge, overrides, args.out) for r in rows]
        if args.replay is not None:
            rule = settings(args.replay)
            if set(rule) - {"grouping"}:
                raise SystemExit(f"--replay {' '.join(args.replay)}: only grouping settings can be replayed")
            spec = GroupingSpec(**rule.get("grouping", {}))
            print(f"replayed choice rule: min_gain {spec.min_gain}, min_gain_se {spec.min_gain_se}, "
                  f"min_gain_alone {spec.min_gain_alone} (standard errors {spec.min_gain_alone_se}), "
                  f"split_vs_alone_se {spec.split_vs_alone_se}, "
                  f"tolerance {spec.tolerance}")
            rows = [replayed(r, spec, selection=not args.replay_without_selection) for r in rows]
        for r in rows:
            print(line(r))
    else:
        for name in args.datasets or BY_DEFAULT:
            for seed in [0, 1, 2] if args.seeds is None else args.seeds:
                t0 = time.perf_counter()
                m = manifest_for(name, seed, overrides, args.test_rows)
                report = evaluate(m, args.out / f"{name}_{seed}", random_seeds=args.random,
                                  train_seeds=args.train_seeds, score_candidates=args.candidates)
                s = report["summary"][m.estimation.method]
                extra = (m.dataset.params or {}).get("test_rows_per_task", 0)
                rows.append({"dataset": name, "seed": seed, "n_tasks": len(report["tasks"]), "extra_test_rows": extra, **s,
                             "seconds": time.perf_counter() - t0})
                print(line(rows[-1]), flush=True)
    summary = criteria(rows)
    print("criteria:", json.dumps(summary))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "outcome.json").write_text(json.dumps({"rows": rows, "criteria": summary}, indent=1))


HEADER = (f"{'dataset':<12}{'seed':>5}{'k':>4} {'advice':>10} {'test':>8} {'all':>8} {'alone':>8} {'planted':>8} "
          f"{'rand med':>9} {'pctile':>7} {'regret':>8} {'pred gain':>10} {'meas gain':>10} {'sec':>5}")


def line(r: dict[str, Any]) -> str:
    return (f"{r['dataset']:<12}{r['seed']:>5}{r['k']:>4} {r['recommendation']:>10} {r['test_loss']:>8.3f} "
            f"{r['one_model_for_all']:>8.3f} {r['one_model_per_task']:>8.3f} {fmt(r['planted']):>8} "
            f"{fmt(r['random_median']):>9} {fmt(r['percentile'], '.2f'):>7} {r['regret']:>+8.1%} "
            f"{fmt(r['predicted_gain'], '+.1%'):>10} {r['measured_gain']:>+10.1%} {r['seconds']:>5.0f}")


if __name__ == "__main__":
    main()
