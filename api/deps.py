"""Request dependencies: the store, the settings and the caller's owner (from the bearer token)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.problems import ApiError
from api.settings import Settings
from api.store import JobStore

bearer = HTTPBearer(auto_error=False, description="An API key: `task-affinity keys create --name NAME` prints one.")


def get_store(request: Request) -> JobStore:
    return request.app.state.store


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_owner(request: Request,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or not credentials.credentials:
        raise ApiError(401, "missing API key; send 'Authorization: Bearer <key>' "
                            "(create one with `task-affinity keys create --name NAME`)", headers=challenge)
    owner = request.app.state.keys.owner(credentials.credentials)
    if owner is None:
        raise ApiError(401, "unknown or revoked API key", headers=challenge)
    return owner


Store = Annotated[JobStore, Depends(get_store)]
Config = Annotated[Settings, Depends(get_settings)]
Owner = Annotated[str, Depends(get_owner)]
