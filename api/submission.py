"""Checking a submitted manifest before it is queued: validity, dataset source, server limits.

A dataset source is a built-in name, the id of an uploaded dataset of the same owner, or a path
inside the server's data root (anything resolving outside it, symlinks included, is refused).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from affinity.data import BUILTINS
from affinity.manifest import Manifest, validation_problems
from api.settings import Settings
from api.store import JobStore


class SubmissionError(Exception):
    """A manifest the server will not queue; ``problems`` name each bad field."""

    def __init__(self, problems: list[dict[str, Any]], status: int = 422) -> None:
        super().__init__("; ".join(p["message"] for p in problems))
        self.problems = problems
        self.status = status


def problem(field: str, value: Any, message: str) -> dict[str, Any]:
    return {"field": field, "value": value, "message": f"{field}: {message}"}


@dataclass(frozen=True)
class Checked:
    manifest: Manifest
    dataset_id: str | None


def check_manifest(body: Any, owner: str, store: JobStore, settings: Settings) -> Checked:
    if not isinstance(body, dict):
        raise SubmissionError([problem("manifest", None, "expected a JSON object with at least a 'dataset' section")])
    try:
        manifest = Manifest.model_validate(body)
    except ValidationError as err:
        raise SubmissionError(validation_problems(err)) from None
    dataset_id = None
    source = manifest.dataset.source
    if source in BUILTINS:
        pass
    elif source.startswith("ds_"):
        ds = store.get_dataset(owner, source)
        if ds is None:
            raise SubmissionError([problem("dataset.source", source, "no uploaded dataset with this id; "
                                           "upload one with POST /v1/datasets and use the id it returns")])
        dataset_id = ds.id
        _check_columns(manifest, ds.columns, ds.format)
    else:
        resolve_data_path(source, settings)
    _check_limits(manifest, settings)
    return Checked(manifest, dataset_id)


def resolve_data_path(source: str, settings: Settings) -> Path:
    """The file a path source names, which must lie inside the data root."""
    if settings.data_root is None:
        raise SubmissionError([problem("dataset.source", source, "this server accepts no file paths (no data root "
                                       "is configured); upload the file with POST /v1/datasets and use its id, "
                                       "or use a built-in dataset (planted, digits)")])
    root = settings.data_root.resolve()
    candidate = Path(source)
    path = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not path.is_relative_to(root):
        raise SubmissionError([problem("dataset.source", source, "resolves outside the server's data root; give a "
                                       "path relative to the data root")])
    if not path.is_file():
        raise SubmissionError([problem("dataset.source", source, "no such file in the server's data root")])
    return path


def _check_columns(manifest: Manifest, columns: list[str], fmt: str) -> None:
    spec = manifest.dataset
    if fmt == "npz":
        return
    if spec.tasks is None:
        raise SubmissionError([problem("dataset.tasks", None, "is required for a table; list the label columns "
                                       f"(the dataset's columns are {columns[:20]})")])
    problems = [problem(f"dataset.tasks[{i}].name", t.name, f"is not a column of the dataset; its columns are "
                        f"{columns[:20]}") for i, t in enumerate(spec.tasks) if t.name not in columns]
    problems += [problem(f"dataset.features[{i}]", c, "is not a column of the dataset")
                 for i, c in enumerate(spec.features or []) if c not in columns]
    if problems:
        raise SubmissionError(problems)


def _check_limits(manifest: Manifest, settings: Settings) -> None:
    est = manifest.estimation
    if est.num_subsets > settings.max_subsets:
        raise SubmissionError([problem("estimation.num_subsets", est.num_subsets,
                                       f"exceeds this server's limit of {settings.max_subsets} subsets per job; "
                                       "lower it")])
    n_tasks = expected_tasks(manifest)
    if n_tasks is not None and n_tasks > settings.max_tasks:
        field = "dataset.params.tasks" if manifest.dataset.source == "planted" else "dataset.tasks"
        raise SubmissionError([problem(field, n_tasks, f"{n_tasks} tasks exceed this server's limit of "
                                       f"{settings.max_tasks} tasks per job; split the tasks over several jobs")])


def expected_tasks(manifest: Manifest) -> int | None:
    """The number of tasks, when the manifest alone tells it."""
    spec = manifest.dataset
    if spec.tasks is not None:
        return len(spec.tasks)
    if spec.source == "planted":
        tasks = spec.params.get("tasks", 16)
        return tasks if isinstance(tasks, int) else None
    return None


def runnable_manifest(manifest_json: dict[str, Any], owner: str, store: JobStore, settings: Settings) -> Manifest:
    """The manifest a worker runs: the stored one with its source resolved to a file."""
    manifest = Manifest.model_validate(manifest_json)
    source = manifest.dataset.source
    if source in BUILTINS:
        return manifest
    if source.startswith("ds_"):
        ds = store.get_dataset(owner, source)
        if ds is None:
            raise ValueError(f"dataset {source} was deleted after the job was submitted; upload it again")
        manifest.dataset.source = ds.path
        return manifest
    try:
        manifest.dataset.source = str(resolve_data_path(source, settings))
    except SubmissionError as exc:
        raise ValueError(str(exc)) from None
    return manifest
