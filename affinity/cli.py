"""`task-affinity`: run the engine from a manifest, print the manifest schema."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from affinity.defaults import BUILTIN_JOBS, builtin_manifest
from affinity.manifest import load_manifest, manifest_schema

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Which tasks should be trained together.")
console = Console()
err_console = Console(stderr=True)


def fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@contextmanager
def user_errors(debug: bool) -> Iterator[None]:
    """Bad input and failed stages end in one line on stderr and exit code 2 (``--debug``: traceback)."""
    try:
        yield
    except (ValueError, RuntimeError, OSError) as exc:
        if debug:
            raise
        fail(str(exc))


def resolve_manifest(manifest: Optional[str]):
    if manifest is None:
        return builtin_manifest("planted")
    if manifest in BUILTIN_JOBS and not Path(manifest).exists():
        return builtin_manifest(manifest)
    return load_manifest(manifest)


def print_summary(result, out: Optional[Path]) -> None:
    from affinity.artifacts import truth_report

    data, g, est = result.data, result.grouping, result.estimate
    info = Table(title="task-affinity", show_header=False)
    # tokenized texts keep their length in the metadata (the columns of X are token ids, not features)
    inputs = (f"texts of up to {data.metadata['tokens']} tokens" if "tokens" in data.metadata
              else f"images of {'×'.join(map(str, data.X.shape[1:]))}" if "image_shape" in data.metadata
              else f"{data.X.shape[1]} features")
    info.add_row("dataset", f"{result.manifest.dataset.source}: {data.X.shape[0]} rows, {inputs}, {data.n_tasks} tasks")
    if getattr(data, "graph", None) is not None:  # kind graph: the edges, isolated nodes, where the features came from
        gs = data.graph.summary()
        info.add_row("graph", f"{gs['nodes']} nodes, {gs['edges']} {'directed ' if gs['directed'] else ''}edges, "
                     f"{gs['isolated_nodes']} isolated nodes, node features: {gs['features']}"
                     + (f", {data.metadata['hops']} hops" if "hops" in data.metadata else ""))
    info.add_row("device", result.device)
    info.add_row("base model", f"best epoch {result.training.best_epoch} of {result.training.epochs_run}, "
                 f"mean val loss {result.training.best_val_loss:.4f}")
    projected = f", d = {est.info['projection_dim']}, p = {est.info.get('n_params')}" if "projection_dim" in est.info else ""
    info.add_row("estimator", f"{est.method}: {est.info.get('num_subsets')} subsets of {est.info.get('subset_size')}"
                 + projected)
    info.add_row("grouping", f"{g.method}, k = {g.k}, objective {g.objective:.4f}")
    advice = getattr(result, "advice", None)
    if advice:
        info.add_row("advice", advice["verdict"])
        split_half = (advice["reliability"].get("split_half") or {}).get("spearman_brown")
        stable = advice["reliability"].get("stability")
        parts = [f"split-half correlation of the affinity {split_half:.2f}"] if split_half is not None else []
        if stable:
            parts.append(f"groups' ARI against {stable.get('of', 'resamples')}: {stable['mean_ari']:.2f}")
        noise = advice.get("training_noise")
        if noise:  # the predicted gain is the mean over the check's seeds; one training is one draw
            parts.append(f"one training's loss on a check fold ± {noise['gain_sd']:.1%} of one model for all's from "
                         f"seed to seed ({noise['seeds']} seeds per fold)")
        if parts:
            info.add_row("reliability", ", ".join(parts))
    truth = truth_report(data.task_names, g.labels, data.truth_groups)
    if truth:
        info.add_row("vs planted groups", f"ARI {truth['ari']:.3f}")
    priority = getattr(result, "priority", None)
    if priority:  # connection_strength: share of each layer's units led by a task (top 5 tasks)
        info.add_row("task priority", " | ".join(
            f"{layer['layer']}: " + ", ".join(
                f"{t} {s:.0%}" for t, s in sorted(layer["share"].items(), key=lambda kv: -kv[1])[:5])
            for layer in priority["layers"]))
    info.add_row("seconds", ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
    if out is not None:
        info.add_row("artifacts", str(out))
    console.print(info)
    groups = Table(title="groups")
    groups.add_column("#", justify="right")
    groups.add_column("tasks")
    for i, members in enumerate(g.groups):
        groups.add_row(str(i), ", ".join(data.task_names[t] for t in members))
    console.print(groups)


@app.command()
def run(
    manifest: Annotated[Optional[str], typer.Argument(help="Manifest (.json/.yaml) or a built-in job name; default: the built-in planted job.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for the artifacts.")] = Path("runs/latest"),
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Train the base model, estimate task affinities with Grad-TAG, group the tasks."""
    from affinity.pipeline import run_job
    from affinity.progress import RichProgress

    with user_errors(debug):
        m = resolve_manifest(manifest)
        with RichProgress() as progress:
            result = run_job(m, out, progress)
    print_summary(result, out)


@app.command()
def validate(
    manifest: Annotated[Optional[str], typer.Argument(help="Manifest or built-in job name; default: planted.")] = None,
    subsets: Annotated[int, typer.Option("--subsets", "-n", min=1, help="Held-out subsets to compare on.")] = 40,
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("runs/validation"),
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Grad-TAG against really fine-tuning θ* on held-out subsets: error, rank agreement, compute."""
    from affinity.progress import RichProgress
    from affinity.validation import validate as run_validation

    with user_errors(debug):
        m = resolve_manifest(manifest)
        with RichProgress() as progress:
            report = run_validation(m, subsets, out, progress)
    table = Table(title="Grad-TAG vs exact fine-tuning (held-out subsets)", show_header=False)
    for key in ("subsets", "median_rel_error", "mean_rel_error", "unchanged_median_rel_error", "spearman",
                "pair_spearman",
                "gradtag_seconds", "exact_seconds", "time_ratio"):
        v = report[key]
        table.add_row(key, f"{v:.4f}" if isinstance(v, float) else str(v))
    lin = report["linearization"]
    if lin:
        gap = sum(r["output_gap"] for r in lin) / len(lin)
        change = sum(r["output_change_network"] for r in lin) / len(lin)
        table.add_row("linearization", f"network vs linear output gap {gap:.4f} (output change {change:.4f})")
    table.add_row("written", str(out / "validation.json") + ", " + str(out / "validation.png"))
    console.print(table)


@app.command()
def evaluate(
    manifest: Annotated[Optional[str], typer.Argument(help="Manifest or built-in job name; default: planted.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("runs/evaluation"),
    estimator: Annotated[Optional[list[str]], typer.Option(
        "--estimator", "-e", help="Estimator(s) whose advice to score (repeatable); default: the manifest's.")] = None,
    random_seeds: Annotated[int, typer.Option(min=0, help="Random partitions of the recommended sizes.")] = 20,
    train_seeds: Annotated[int, typer.Option(
        min=1, max=20, help="Trainings per grouping (seeds training.seed, +1, …); the test loss is their mean.")] = 1,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Score the advice on held-out test rows: the recommended groups against one model for all, one per task, random."""
    from affinity.outcome import ESTIMATOR_ORDER, evaluate as run_evaluation
    from affinity.progress import RichProgress

    with user_errors(debug):
        m = resolve_manifest(manifest)
        bad = [e for e in estimator or [] if e not in ESTIMATOR_ORDER]
        if bad:
            raise ValueError(f"--estimator {bad[0]!r} is not an estimator; use one of {', '.join(ESTIMATOR_ORDER)}")
        with RichProgress() as progress:
            report = run_evaluation(m, out, progress, random_seeds=random_seeds, train_seeds=train_seeds,
                                    estimators=tuple(estimator) if estimator else None)
    table = Table(title=f"Grouping outcome: sum of per-task test losses ({report['test_fraction']:.0%} of rows held out)")
    table.add_column("grouping")
    table.add_column("k", justify="right")
    table.add_column("sum test loss", justify="right")
    for name, row in report["groupings"].items():
        table.add_row(name, str(row["k"]), f"{row['sum_test_loss']:.4f}")
    if report["random_test_losses"]:
        table.add_row(f"random (median of {len(report['random_test_losses'])})", "",
                      f"{float(np.median(report['random_test_losses'])):.4f}")
    console.print(table)
    for name, s in report["summary"].items():
        pct = f", beats {s['percentile']:.0%} of random partitions" if s["percentile"] is not None else ""
        predicted = f"{s['predicted_gain']:+.1%}" if s["predicted_gain"] is not None else "n/a"
        console.print(f"{name}: {report['advice'][name]['verdict']}; measured gain over one model for all "
                      f"{s['measured_gain']:+.1%} (predicted {predicted}), regret {s['regret']:+.1%}{pct}")
    console.print(f"written: {out / 'evaluation.json'}, {out / 'evaluation.png'}")


@app.command()
def schema() -> None:
    """Print the manifest's JSON Schema."""
    sys.stdout.write(json.dumps(manifest_schema(), indent=2) + "\n")


@app.command()
def example(name: Annotated[str, typer.Argument(help="planted, digits, text or graph")] = "planted") -> None:
    """Print the full manifest of a built-in job, every default spelled out."""
    try:
        m = builtin_manifest(name)
    except ValueError as exc:
        fail(str(exc))
    sys.stdout.write(json.dumps(m.model_dump(mode="json"), indent=2) + "\n")


def _register_service_commands() -> None:
    from api.commands import register

    register(app)


_register_service_commands()

if __name__ == "__main__":
    app()
