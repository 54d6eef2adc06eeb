"""A finished job's results: affinity (JSON or CSV), subsets, groups, heatmap, other artifacts."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from api.deps import Config, Owner, Store
from api.problems import ApiError, responses

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["results"], responses=responses(401, 404, 409))

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,100}")
MEDIA = {".json": "application/json", ".png": "image/png", ".pt": "application/octet-stream",
         ".npz": "application/octet-stream", ".csv": "text/csv"}


def _artifact(job_id: str, name: str, owner: str, store: Any, settings: Any) -> Path:
    job = store.get_job(owner, job_id)
    if job is None:
        raise ApiError(404, f"no job {job_id}")
    if job.status != "succeeded":
        raise ApiError(409, f"job {job_id} is {job.status}; results exist once it has succeeded")
    # The name is checked before it touches the file system (a NUL byte made resolve() raise: a 500).
    if not SAFE_NAME.fullmatch(name):
        raise ApiError(404, f"job {job_id} has no artifact {name!r}")
    folder = (settings.artifacts / job_id).resolve()
    path = (folder / name).resolve()
    if not path.is_relative_to(folder) or not path.is_file():
        raise ApiError(404, f"job {job_id} has no artifact {name!r}")
    return path


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """A text cell a spreadsheet shows as text: one starting like a formula (= + - @, tab, CR) gets a
    leading single quote (OWASP's CSV injection advice), so ``=HYPERLINK(...)`` is not run on opening."""
    return "'" + text if text.startswith(FORMULA_START) else text


def _json(path: Path) -> Response:
    return Response(path.read_bytes(), media_type="application/json")


@router.get("/affinity", responses={200: {"content": {"application/json": {}, "text/csv": {}},
                                          "description": "The affinity matrix with task names and metadata."}})
def get_affinity(job_id: str, owner: Owner, store: Store, settings: Config,
                 format: Literal["json", "csv"] = "json") -> Response:
    """The affinity matrix (as the engine's affinity.json), or ``?format=csv`` (a task × task table)."""
    path = _artifact(job_id, "affinity.json", owner, store, settings)
    if format == "json":
        return _json(path)
    data = json.loads(path.read_text())
    buf = io.StringIO()
    writer = csv.writer(buf)
    names = [csv_cell(str(t)) for t in data["tasks"]]
    writer.writerow(["task", *names])
    for name, row in zip(names, data["matrix"]):
        writer.writerow([name, *(repr(float(v)) for v in row)])  # numbers stay numbers, a minus sign included
    return Response(buf.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{job_id}-affinity.csv"'})


@router.get("/subsets", responses={200: {"content": {"application/json": {}},
                                         "description": "Every sampled subset's estimated per-task losses."}})
def get_subsets(job_id: str, owner: Owner, store: Store, settings: Config) -> Response:
    return _json(_artifact(job_id, "subsets.json", owner, store, settings))


@router.get("/groups", responses={200: {"content": {"application/json": {}},
                                        "description": "The task groups, objective and k selection."}})
def get_groups(job_id: str, owner: Owner, store: Store, settings: Config) -> Response:
    return _json(_artifact(job_id, "groups.json", owner, store, settings))


@router.get("/heatmap.png", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}, "description": "The affinity heatmap, tasks by group."}})
def get_heatmap(job_id: str, owner: Owner, store: Store, settings: Config) -> FileResponse:
    return FileResponse(_artifact(job_id, "heatmap.png", owner, store, settings), media_type="image/png")


@router.get("/artifacts/{name}", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}, "application/json": {}, "image/png": {}},
                             "description": "An artifact file: model.pt, gradients.npz, summary.json, ..."}})
def get_artifact(job_id: str, name: str, owner: Owner, store: Store, settings: Config) -> FileResponse:
    path = _artifact(job_id, name, owner, store, settings)
    return FileResponse(path, media_type=MEDIA.get(path.suffix, "application/octet-stream"), filename=path.name)
