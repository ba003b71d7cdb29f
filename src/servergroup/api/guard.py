"""The gate in front of the API's routes: an action's token and size checked before its body.

Theory of operation. FastAPI reads and decodes a request's JSON body before
it runs the route's dependencies, so a malformed body was answered 422
before `may_act` could refuse a caller without the token, and a body of any
size was read into memory first. `ActionGuard` is a plain ASGI middleware
that sees each request before any of that: for every method that can change
something (all but GET, HEAD and OPTIONS) it applies the same `Access.check`
as the routes and answers 401 at once, and it refuses a body announced as
larger than `max_body` (413) or sent without a length (411: every client of
this API, the CLI, curl and httpx, sends `Content-Length`) before a byte of
it is read. Reads pass untouched (their own dependency applies the read
rule), so the event stream is not wrapped. The routes keep their own checks:
this gate only moves the refusal earlier.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from servergroup.api.auth import Access

#: The largest request body an action takes (its JSON is a few hundred bytes).
MAX_BODY = 1024 * 1024
#: Methods that only read: the gate lets them through.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def unauthorized(reason: str) -> JSONResponse:
    """The 401 answer: `reason` as the detail, and the scheme to use."""
    return JSONResponse({"detail": reason}, status_code=401, headers={"WWW-Authenticate": "Bearer"})


class ActionGuard:
    """ASGI middleware: see the module docstring."""

    def __init__(self, app: ASGIApp, *, access: Access, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.access = access
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = {name.lower(): value for name, value in scope["headers"]}
        authorization = headers.get(b"authorization")
        reason = self.access.check(
            None if authorization is None else authorization.decode("latin-1"), action=True
        )
        if reason is not None:
            await unauthorized(reason)(scope, receive, send)
            return
        length = headers.get(b"content-length")
        if length is None and b"chunked" in headers.get(b"transfer-encoding", b""):
            await JSONResponse(
                {"detail": "a request body needs a Content-Length."}, status_code=411
            )(scope, receive, send)
            return
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await JSONResponse(
                {"detail": f"a request body is at most {self.max_body} bytes."}, status_code=413
            )(scope, receive, send)
            return
        await self.app(scope, receive, send)


__all__ = ["MAX_BODY", "ActionGuard", "unauthorized"]
