"""The FastAPI application: ``create_app(settings)``; routes under /v1, problem+json errors."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from api import limits, problems
from api.db import engine_for
from api.keys import KeyCache
from api.routes import dashboard, datasets, health, jobs, results
from api.settings import Settings, get_settings
from api.store import JobStore

VERSION = "1.0.0"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="task-affinity",
        version=VERSION,
        description="Which tasks should be trained together: submit a manifest, poll the job, download the task "
                    "affinity matrix and the groups. Authenticate with `Authorization: Bearer <API key>`.",
    )
    app.state.settings = settings
    app.state.store = JobStore(engine_for(settings.db_url))
    app.state.keys = KeyCache(app.state.store.sessions, settings.key_cache_seconds)
    problems.install(app)
    limits.install(app, settings)
    for module in (health, datasets, jobs, results):
        app.include_router(module.router, dependencies=[Depends(problems.reject_unknown_query)],
                           responses=problems.responses(400, 422))
    app.include_router(dashboard.router)  # pages and assets: query strings are the browser's business
    problems.problem_openapi(app)
    return app
