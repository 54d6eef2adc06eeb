"""Writing a job's results to its output folder, each file atomically (temp file + rename)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from affinity.plots import heatmap

if TYPE_CHECKING:
    from affinity.pipeline import JobResult

ARTIFACTS = ("affinity.json", "subsets.json", "groups.json", "heatmap.png", "model.pt", "gradients.npz",  # grad_tag only
            
             "priority.json",  # connection_strength only
             "summary.json")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, allow_nan=False).encode())


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def truth_report(names: list[str], labels: np.ndarray, truth: list[list[str]] | None) -> dict[str, Any] | None:
    """Known groups of the dataset and the adjusted Rand index of the found groups against them."""
    if not truth:
        return None
    index = {n: g for g, members in enumerate(truth) for n in members}
    true_labels = [index.get(n, -1) for n in names]
    return {"groups": truth, "ari": float(adjusted_rand_score(true_labels, labels))}


def groups_record(result: "JobResult") -> dict[str, Any]:
    g = result.grouping
    names = result.data.task_names
    record = g.to_dict()
    record["groups"] = [[names[i] for i in members] for members in g.groups]
    record["solver"] = g.method
    record["truth"] = truth_report(names, np.asarray(g.labels), result.data.truth_groups)
    if result.advice is not None:
        advice = dict(result.advice)
        per_task = advice.pop("predicted_task_val_loss", None)
        if per_task is not None:
            advice["predicted_task_val_loss"] = dict(zip(names, per_task))
        record["advice"] = advice
        record["verdict"] = advice["verdict"]
        record["recommendation"] = advice["recommendation"]
        record["predicted_gain"] = advice["predicted_gain"]
    return record


def write_artifacts(out: Path, result: "JobResult") -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    est, data, names = result.estimate, result.data, result.data.task_names
    manifest = result.manifest.model_dump(mode="json")
    atomic_write_json(out / "affinity.json", {
        "tasks": names,
        "matrix": est.matrix.tolist(),
        "counts": est.counts.tolist(),
        "self_gain": est.self_gain.tolist(),
        "base_val_loss": est.base_val_loss.tolist(),
        "base_val_acc": [_finite(a) for a in est.base_val_acc],
        "method": est.method,
        "metric": "mean over subsets containing i and j of (base validation loss of i − estimated validation "
                  "loss of i after fine-tuning on the subset), symmetrized, zero diagonal",
        "estimator": est.info,
        "manifest": manifest,
    })
    atomic_write_json(out / "subsets.json", {
        "method": est.method, "tasks": names,
        "base_val_loss": dict(zip(names, est.base_val_loss.tolist())),
        "subsets": est.table.records(names) if est.table is not None else [],
    })
    groups = groups_record(result)
    atomic_write_json(out / "groups.json", groups)
    heatmap(est.matrix, names, result.grouping.groups, out / "heatmap.png",
            f"{est.method} affinity, {len(names)} tasks, k = {result.grouping.k}")
    buf = io.BytesIO()
    # Frozen parameters (a pretrained encoder under LoRA) are left out: model.pretrained has them.
    frozen = {k for k, p in result.model.named_parameters() if not p.requires_grad}
    torch.save({
        "state_dict": {k: v.detach().cpu() for k, v in result.model.state_dict().items() if k not in frozen},
        "model": manifest["model"], "task_names": names, "task_types": data.task_types,
        "feature_names": data.feature_names, "feature_mean": data.feature_mean, "feature_std": data.feature_std,
    }, buf)
    atomic_write_bytes(out / "model.pt", buf.getvalue())
    grads = result.gradients
    if grads is not None:
        buf = io.BytesIO()
        np.savez(buf, features=grads.features, base_output=grads.base_output, rows=grads.rows, tasks=grads.tasks)
        atomic_write_bytes(out / "gradients.npz",  # grad_tag only
             buf.getvalue())
    if result.priority is not None:
        atomic_write_json(out / "priority.json", result.priority)
    tr = result.training
    atomic_write_json(out / "summary.json", {
        "dataset": data.summary(), "device": result.device, "backend": result.backend,
        "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
        "base_training": {"best_epoch": tr.best_epoch, "epochs_run": tr.epochs_run,
                          "best_val_loss": tr.best_val_loss},
        "groups": groups["groups"], "truth_ari": groups["truth"]["ari"] if groups["truth"] else None,
        "verdict": groups.get("verdict"), "predicted_gain": groups.get("predicted_gain"),
    })
    return {name: out / name for name in ARTIFACTS if (out / name).exists()}
