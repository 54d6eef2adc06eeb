"""Request body limits, enforced before any route reads a byte: 413 problem+json past the limit.

Every JSON route gets ``body_limit_bytes`` (a manifest is a few KB; without a limit a 150 MB one
was parsed, stored and echoed by every listing). The multipart upload route gets the upload limit
plus room for the multipart framing: the form parser spools a file before the route sees it, so the
limit must hold while the bytes arrive, not only in the route. A declared ``Content-Length`` over the
limit is refused without reading the body; a chunked body is counted as it streams.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.settings import Settings

UPLOAD_ROUTES = {("POST", "/v1/datasets")}
MULTIPART_SLACK = 64 * 1024  # multipart boundaries and part headers around the uploaded file


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes its limit (handled as a 413 problem)."""

    def __init__(self, detail: str) -> None:
        super().__init__(413, detail)


class BodyLimit:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    def limit_for(self, scope: Scope) -> tuple[int, str]:
        """(bytes, what the limit is) for this request."""
        if (scope.get("method"), scope.get("path")) in UPLOAD_ROUTES:
            return (self.settings.upload_limit_bytes + MULTIPART_SLACK,
                    f"this server's upload limit of {self.settings.upload_limit_bytes} bytes "
                    "(TASK_AFFINITY_UPLOAD_LIMIT_MB)")
        return (self.settings.body_limit_bytes,
                f"this server's limit of {self.settings.body_limit_bytes} bytes for a JSON request body "
                "(TASK_AFFINITY_BODY_LIMIT_MB)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, what = self.limit_for(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(scope, receive, send, f"the request body of {declared} bytes exceeds {what}; send less")
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(f"the request body exceeds {what}; send less")
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge as exc:  # read outside a route's exception handling (should not happen)
            if started:
                raise
            await _refuse(scope, receive, send, str(exc.detail))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(scope: Scope, receive: Receive, send: Send, detail: str) -> None:
    from api.problems import problem_response

    response = problem_response(Request(scope), 413, detail, headers={"Connection": "close"})
    await response(scope, receive, send)


def install(app: Any, settings: Settings) -> None:
    app.add_middleware(BodyLimit, settings=settings)
