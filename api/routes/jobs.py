"""Jobs: submit a manifest, list, poll, cancel, delete."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Response

from affinity.manifest import manifest_schema
from api.deps import Config, Owner, Store
from api.problems import ApiError, responses
from api.schemas import JobList, JobOut, JobStatus
from api.store import IdempotencyConflict
from api.submission import SubmissionError, check_manifest
from api.uploads import remove

router = APIRouter(prefix="/v1", tags=["jobs"], responses=responses(401))

EXAMPLE = {"dataset": {"source": "planted", "params": {"tasks": 16, "groups": 4}}, "grouping": {"k": 4}}


@router.get("/schema/manifest", tags=["schema"])
def get_manifest_schema() -> dict[str, Any]:
    """JSON Schema of a job manifest (the body of POST /v1/jobs)."""
    return manifest_schema()


@router.get("/schema/kinds", tags=["schema"])
def get_kinds() -> dict[str, Any]:
    """The data kinds (``dataset.kind``) and model kinds (``model.kind``) this server runs, built-in and from
    installed plug-ins: a data kind's column fields, the data kinds a model kind takes and its starting
    settings, and whether the server estimates jobs of the kind before queueing them."""
    from affinity.kinds import describe_kinds

    return describe_kinds()


@router.post("/jobs", status_code=201, response_model=JobOut, responses={
    200: {"model": JobOut, "description": "The job created before with the same Idempotency-Key and body."},
    **responses(409, 413, 422)})
def submit_job(
    response: Response, owner: Owner, store: Store, settings: Config,
    manifest: Annotated[dict[str, Any], Body(description="A job manifest; see GET /v1/schema/manifest.",
                                             openapi_examples={"planted": {"value": EXAMPLE}})],
    idempotency_key: Annotated[str | None, Header(max_length=200, description="Resubmitting the same body with "
                                                  "the same key returns the same job.")] = None,
) -> JobOut:
    """Validate a manifest and queue the job (it runs on a worker, never in the request)."""
    try:
        checked = check_manifest(manifest, owner, store, settings)
    except SubmissionError as exc:
        raise ApiError(exc.status, f"invalid manifest: {exc}", exc.problems) from None
    body = checked.manifest.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    try:
        job, created = store.create_job(owner, body, checked.dataset_id, idempotency_key or None, digest)
    except IdempotencyConflict as exc:
        raise ApiError(409, f"Idempotency-Key was already used for job {exc} with a different manifest; "
                            "use a new key for a different job") from None
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut.of(job)


@router.get("/jobs", response_model=JobList, responses=responses(422))
def list_jobs(owner: Owner, store: Store, status: JobStatus | None = None,
              limit: Annotated[int, Query(ge=1, le=200)] = 50,
              offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0) -> JobList:
    """The caller's jobs, newest first."""
    rows, total = store.list_jobs(owner, status, limit, offset)
    return JobList(items=[JobOut.of(j) for j in rows], total=total, limit=limit, offset=offset)


@router.get("/jobs/{job_id}", response_model=JobOut, responses=responses(404))
def get_job(job_id: str, owner: Owner, store: Store) -> JobOut:
    """Status, stage, progress (0–1), timestamps and error of a job."""
    job = store.get_job(owner, job_id)
    if job is None:
        raise ApiError(404, f"no job {job_id}")
    return JobOut.of(job)


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, responses=responses(404, 409))
def cancel_job(job_id: str, owner: Owner, store: Store) -> JobOut:
    """Cancel a queued job at once, or a running one at its next batch."""
    job = store.get_job(owner, job_id)
    if job is None:
        raise ApiError(404, f"no job {job_id}")
    if job.status in ("succeeded", "failed", "cancelled"):
        raise ApiError(409, f"job {job_id} is already {job.status}")
    after = store.request_cancel(owner, job_id)
    if after is None:  # deleted by a concurrent DELETE since it was read
        raise ApiError(404, f"no job {job_id}")
    return JobOut.of(after)


@router.delete("/jobs/{job_id}", status_code=204, response_class=Response, responses=responses(404, 409))
def delete_job(job_id: str, owner: Owner, store: Store, settings: Config) -> Response:
    """Delete a job and its artifacts (a running job must be cancelled first)."""
    job = store.get_job(owner, job_id)
    if job is None:
        raise ApiError(404, f"no job {job_id}")
    if not store.delete_job(owner, job_id):
        if store.get_job(owner, job_id) is None:  # a concurrent DELETE was first
            raise ApiError(404, f"no job {job_id}")
        raise ApiError(409, f"job {job_id} is running; cancel it first (POST /v1/jobs/{job_id}/cancel)")
    remove(settings.artifacts / job_id)
    return Response(status_code=204)
