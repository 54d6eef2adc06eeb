"""Response bodies of the API (the OpenAPI document is generated from these)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


def iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.isoformat(timespec="milliseconds") + "Z"


class JobOut(BaseModel):
    id: str
    status: JobStatus
    stage: str | None = Field(None, description="Current stage of a running job.")
    progress: float = Field(description="Overall progress, 0–1.")
    stage_progress: float = Field(description="Progress within the current stage, 0–1.")
    eta_seconds: float | None = Field(None, description="Estimated seconds left in the current stage.")
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    updated_at: str
    attempts: int
    cancel_requested: bool
    error: str | None = None
    manifest: dict[str, Any]
    summary: dict[str, Any] | None = Field(
        None, description="Groups, the advice (verdict, recommendation, predicted_gain, reliability), timings and "
                          "artifact names of a finished job.")
    links: dict[str, str]

    @classmethod
    def of(cls, job: Any) -> "JobOut":
        base = f"/v1/jobs/{job.id}"
        links = {"self": base}
        if job.status == "succeeded":
            links |= {"affinity": f"{base}/affinity", "groups": f"{base}/groups", "subsets": f"{base}/subsets",
                      "heatmap": f"{base}/heatmap.png"}
        return cls(id=job.id, status=job.status, stage=job.stage, progress=job.progress,
                   stage_progress=job.stage_progress, eta_seconds=job.eta_seconds, created_at=iso(job.created_at),
                   started_at=iso(job.started_at), finished_at=iso(job.finished_at), updated_at=iso(job.updated_at),
                   attempts=job.attempts, cancel_requested=job.cancel_requested, error=job.error,
                   manifest=job.manifest, summary=job.summary, links=links)


class JobList(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int


class DatasetOut(BaseModel):
    id: str
    filename: str
    format: Literal["csv", "parquet", "npz", "images", "graph"]  # graph: a node table (path), its edge list beside it
    size_bytes: int
    rows: int
    columns: list[str]
    created_at: str

    @classmethod
    def of(cls, ds: Any) -> "DatasetOut":
        return cls(id=ds.id, filename=ds.filename, format=ds.format, size_bytes=ds.size_bytes, rows=ds.rows,
                   columns=ds.columns, created_at=iso(ds.created_at))


class DatasetList(BaseModel):
    items: list[DatasetOut]
    total: int
    limit: int
    offset: int


class WorkerPoolOut(BaseModel):
    expected: int | None = Field(description="Worker processes `serve` runs (--workers).")
    alive: int = Field(description="Of them, alive now (a dead one is restarted with a backoff).")


class Health(BaseModel):
    status: Literal["ok"]
    database: str | None = None
    workers: WorkerPoolOut | None = Field(None, description="The embedded worker pool of `serve` (absent when "
                                                            "the API runs without one).")
