"""The outermost middleware: request ids, the drain gate, and each request's record.

Pure ASGI rather than a `BaseHTTPMiddleware`, because a streamed answer ends long after the
route returns: the record is closed (latency observed, one log line written) when the last
byte has been sent or the client went away, not when the headers left.

- `X-Request-Id`: taken from the request when it is a sane token (at most 128 characters
  of `[A-Za-z0-9._:/+=-]`), else a new one is made; returned on every response, errors
  included, and written in the request's log line.
- While draining (SIGTERM received), every route but `/health` and `/metrics` answers 503
  with `Retry-After`, in its API's error shape; requests already running go on.
- `/health` and `/metrics` are probes: counted as requests, but no log line each.
"""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gemma_server.api.errors import ApiError, render
from gemma_server.api.state import ServerState
from gemma_server.telemetry import RequestRecord

REQUEST_ID_HEADER = "X-Request-Id"
_SANE_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
PROBE_PATHS = frozenset({"/health", "/metrics"})


def request_id(given: str | None) -> str:
    if given is not None and _SANE_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


class RequestObserver:
    def __init__(self, app: ASGIApp, state: ServerState):
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        probe = scope["path"] in PROBE_PATHS
        ident = request_id(Headers(scope=scope).get(REQUEST_ID_HEADER))
        record = RequestRecord(ident, scope["method"], scope["path"], self.state.metrics)
        scope.setdefault("state", {})["record"] = record

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = ident
            await send(message)

        try:
            if self.state.draining and not probe:
                await render(Request(scope), ApiError(
                    503, "The server is shutting down; retry on another instance.", None,
                    "server_shutting_down", 3040))(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            record.route = getattr(route, "path", None)
            if record.status is None:  # nothing was sent: the client left, or a crash
                record.status = 499 if record.completion_tokens else 500
            record.close(write_log=not probe)
