"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.db import ping
from api.pool import pool_status
from api.problems import ApiError, responses
from api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, response_model_exclude={"workers"})
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, response_model_exclude_none=True, responses=responses(503))
def readyz(request: Request) -> Health:
    """The database is reachable and, under `serve` with workers, at least one worker process is alive."""
    engine = request.app.state.store.engine
    try:
        ping(engine)
    except Exception as exc:
        raise ApiError(503, f"database unreachable: {type(exc).__name__}") from None
    pool = pool_status(request.app.state.settings.worker_pool_file)
    if pool is not None and pool["expected"] is None:
        raise ApiError(503, "the worker pool's state cannot be read (serve is stopping?)", headers={"Retry-After": "5"})
    if pool is not None and pool["expected"] > 0 and pool["alive"] == 0:
        raise ApiError(503, f"no worker process is alive (0 of {pool['expected']}): queued jobs wait until serve has "
                            "restarted one; see its log", headers={"Retry-After": "5"})
    return Health(status="ok", database=engine.dialect.name, workers=pool)
