"""Errors as RFC 9457 problem details (``application/problem+json``), never a traceback."""

from __future__ import annotations

import json
import logging
import math
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("task_affinity.api")


class FieldProblem(BaseModel):
    field: str = Field(description="Dotted path of the bad field, e.g. estimation.num_subsets.")
    message: str = Field(description="What is wrong and how to fix it.")
    value: Any = Field(None, description="The rejected value, when there was one.")


class Problem(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldProblem] | None = Field(None, description="Per-field problems of a rejected request body.")


class ApiError(Exception):
    def __init__(self, status: int, detail: str, errors: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.errors, self.headers = status, detail, errors, headers


def problem_response(request: Request, status: int, detail: str, errors: list[dict[str, Any]] | None = None,
                     headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status,
                            "detail": detail, "instance": request.url.path}
    if errors is not None:
        body["errors"] = [_jsonable(e) for e in errors]
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _jsonable(e: dict[str, Any]) -> dict[str, Any]:
    return {"field": str(e.get("field", "")), "message": str(e.get("message", "")), "value": json_safe(e.get("value"))}


def json_safe(value: Any, depth: int = 0) -> Any:
    """The echo of a rejected value as standard JSON: NaN and ±Infinity as strings, long strings, lists
    and mappings cut short, deep nesting and other types as (shortened) text."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value if len(value) <= ECHO_CHARS else value[:ECHO_CHARS] + "…"
    if depth < ECHO_DEPTH and isinstance(value, (list, tuple)):
        return [json_safe(v, depth + 1) for v in value[:ECHO_ITEMS]] + (["…"] if len(value) > ECHO_ITEMS else [])
    if depth < ECHO_DEPTH and isinstance(value, dict):
        items = list(value.items())
        return {str(k)[:ECHO_CHARS]: json_safe(v, depth + 1) for k, v in items[:ECHO_ITEMS]}
    text = repr(value) if not isinstance(value, (list, tuple, dict)) else f"<{type(value).__name__} nested too deep>"
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "…"


ECHO_CHARS, ECHO_ITEMS, ECHO_DEPTH = 200, 20, 4


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return problem_response(request, exc.status, exc.detail, exc.errors, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.url.path}; see /docs for the API"
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            allowed = allowed_methods(request)
            headers["Allow"] = ", ".join(allowed)
            detail = f"{request.method} is not allowed on {request.url.path}; use {' or '.join(allowed)}"
        if exc.status_code == 400 and isinstance(exc.__cause__, (RecursionError, UnicodeDecodeError)):
            # FastAPI's "error parsing the body": json.loads gave up on arrays or objects nested about a
            # thousand deep, or on bytes that are not UTF-8.
            what = (f"nests arrays or objects too deeply to parse (a manifest nests at most {MAX_NESTING} levels)"
                    if isinstance(exc.__cause__, RecursionError) else "is not UTF-8 text")
            detail = f"the request body is not valid JSON: it {what}; send a JSON object"
            return problem_response(request, 422, detail, [{"field": "body", "message": f"body: {detail}",
                                                            "value": None}])
        if exc.status_code == 400 and detail in ("Invalid multipart data.", "Missing boundary in multipart."):
            cause = exc.__cause__ or exc.__context__
            cause = (cause.__cause__ or cause.__context__) if cause is not None else None  # the parser's own words
            why = f" ({cause})" if type(cause).__module__.startswith("python_multipart") and str(cause) else ""
            detail = (f"the multipart body cannot be read: {detail.rstrip('.')}{why}; send multipart/form-data with the "
                      "table as the part 'file' (or a graph as 'nodes' and 'edges'), each part's headers (its file "
                      "name included) under 4 KB")
        return problem_response(request, exc.status_code, detail, headers=headers or None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        bad_json = next((e for e in exc.errors() if e.get("type") == "json_invalid"), None)
        if bad_json is not None:
            detail = not_json_detail(exc.body, bad_json)
            return problem_response(request, 422, detail, [{"field": "body", "message": f"body: {detail}",
                                                            "value": None}])
        for e in exc.errors():
            loc = tuple(p for p in e.get("loc", ()) if p not in ("body", "query", "path", "header"))
            field = _loc(loc) or "body"
            msg = e.get("msg", "invalid")
            if "Expected UploadFile" in msg:  # a form field, or a file part without a file name: never echo its bytes
                errors.append({"field": field, "value": None, "message": f"{field}: is not a file; send it as a file "
                               "part with a file name (multipart/form-data, e.g. curl -F 'file=@data.csv')"})
                continue
            errors.append({"field": field, "message": f"{field}: {msg}", "value": e.get("input")})
        detail = "; ".join(x["message"] for x in errors) or "invalid request"
        return problem_response(request, 422, detail, errors)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(DisconnectionError)
    async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # The database went away (restart, network, a SQLite lock held too long): a 503 the
        # client can retry, not a 500; the pool reconnects (pre-ping) once it is back.
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
        return problem_response(request, 503, f"database unavailable ({type(exc).__name__}); retry shortly",
                                headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(request, 500, f"internal error ({type(exc).__name__}); it was logged")


def not_json_detail(body: Any, error: dict[str, Any]) -> str:
    """What is wrong with a body that is not JSON, with its line and column (the parser's own words)."""
    where = ""
    if isinstance(body, (str, bytes)):
        try:
            json.loads(body)
        except json.JSONDecodeError as exc:
            where = f"{exc.msg} at line {exc.lineno}, column {exc.colno} (character {exc.pos})"
        except (ValueError, RecursionError):
            pass
    if not where:
        where = f"{error.get('ctx', {}).get('error', 'invalid JSON')} at character {error.get('loc', ('', '?'))[-1]}"
    return f"the request body is not valid JSON: {where}; send a JSON object (a manifest: see /v1/schema/manifest)"


MAX_NESTING = 32  # arrays and objects in a manifest (its own sections nest 3 deep; dataset.params a few more)

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route accepts on this path (Starlette's 405 names only one route's).

    Each method is tried against the router the way a request would be routed, so routes of included
    routers count as much as the app's own.
    """
    from starlette.routing import Match

    methods = []
    for method in HTTP_METHODS:
        scope = {"type": "http", "method": method, "path": request.scope["path"], "headers": [],
                 "root_path": request.scope.get("root_path", ""), "query_string": b""}
        if any(route.matches(dict(scope))[0] == Match.FULL for route in request.app.router.routes):
            methods.append(method)
    return methods


def reject_unknown_query(request: Request) -> None:
    """A query parameter the route does not declare is an error (a typo should not be silently ignored)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = {p.alias for p in _all_query_params(dependant)}
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise ApiError(422, f"unknown query parameter(s) {unknown}; this endpoint accepts {sorted(known) or 'none'}",
                       [{"field": u, "message": f"{u}: not a parameter of this endpoint; remove it", "value": None}
                        for u in unknown])


def _all_query_params(dependant: Any) -> list[Any]:
    params = list(dependant.query_params)
    for sub in dependant.dependencies:
        params += _all_query_params(sub)
    return params


def problem_openapi(app: FastAPI) -> None:
    """Document every error response as problem+json (FastAPI's default 422 says application/json)."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        comps = doc.setdefault("components", {}).setdefault("schemas", {})
        comps["FieldProblem"] = FieldProblem.model_json_schema()
        problem_schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        problem_schema.pop("$defs", None)
        comps["Problem"] = problem_schema
        for name in ("HTTPValidationError", "ValidationError"):
            comps.pop(name, None)
        _manifest_body(doc, comps)
        ref = {"schema": {"$ref": "#/components/schemas/Problem"}}
        for path in doc.get("paths", {}).values():
            for op in path.values():
                for code, resp in op.get("responses", {}).items():
                    if code[0] in "45":
                        resp["content"] = {PROBLEM_JSON: ref}
                        resp.setdefault("description", HTTPStatus(int(code)).phrase)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _manifest_body(doc: dict[str, Any], comps: dict[str, Any]) -> None:
    """POST /v1/jobs takes a manifest: document its full JSON Schema (the route validates it itself)."""
    from affinity.manifest import Manifest

    schema = Manifest.model_json_schema(ref_template="#/components/schemas/{model}")
    comps.update(schema.pop("$defs", {}))
    comps["Manifest"] = schema
    op = doc.get("paths", {}).get("/v1/jobs", {}).get("post")
    if op is not None:
        content = op["requestBody"]["content"]["application/json"]
        content["schema"] = {"$ref": "#/components/schemas/Manifest"}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem responses a route can give."""
    return {c: {"content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
                "description": HTTPStatus(c).phrase} for c in codes}
