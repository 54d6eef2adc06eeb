"""The web dashboard: ``/`` (one HTML page) and its assets under ``/static/`` — all served by the app itself.

The page talks to the same /v1 API with the API key the user enters once (kept in sessionStorage).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse

from api.problems import ApiError

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).resolve().parent.parent / "static"
MEDIA = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
         ".json": "application/json"}
# Only this app's own files: no script, style, image or font from anywhere else.
SECURITY = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                                       "base-uri 'none'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


# The form's prefilled manifest: the planted job made small enough to finish in about half a minute on one CPU core
# (the check of the groups on 5 folds with one training each; the defaults' 10 folds × 3 trainings take minutes).
SMALL_EXAMPLE: dict[str, Any] = {
    "dataset": {"source": "planted", "params": {"tasks": 8, "groups": 2}},
    "model": {"hidden": [16, 1], "activation": "tanh"},
    "training": {"patience": 30},
    "estimation": {"num_subsets": 60, "subset_size": 3, "projection_dim": 64},
    "grouping": {"k": 2, "folds": 5, "check_seeds": 1},
}


ASSET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,100}")


def _file(name: str) -> FileResponse:
    if not ASSET_NAME.fullmatch(name):  # before the file system sees it (a NUL byte made resolve() raise)
        raise ApiError(404, f"no dashboard file {name[:100]!r}")
    path = (STATIC / name).resolve()
    if not path.is_relative_to(STATIC) or path.suffix not in MEDIA or not path.is_file():
        raise ApiError(404, f"no dashboard file {name!r}")
    return FileResponse(path, media_type=MEDIA[path.suffix], headers=SECURITY)


@router.get("/")
def index() -> FileResponse:
    """The dashboard page."""
    return _file("index.html")


@router.get("/static/examples.json")
def examples() -> JSONResponse:
    """Manifests the submit form offers: a small one (about half a minute) and the built-in jobs."""
    from affinity.defaults import BUILTIN_JOBS

    return JSONResponse({"small": SMALL_EXAMPLE, **BUILTIN_JOBS}, headers=SECURITY)


@router.get("/static/{name}")
def static(name: str) -> FileResponse:
    """A dashboard asset (script, style sheet, icon)."""
    return _file(name)

