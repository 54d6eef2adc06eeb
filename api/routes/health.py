"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.db import ping
from api.problems import ApiError, responses
from api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses=responses(503))
def readyz(request: Request) -> Health:
    """The database is reachable."""
    engine = request.app.state.store.engine
    try:
        ping(engine)
    except Exception as exc:
        raise ApiError(503, f"database unreachable: {type(exc).__name__}") from None
    return Health(status="ok", database=engine.dialect.name)
