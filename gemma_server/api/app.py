"""`create_app`: the FastAPI application for one served model.

Routes are thin; everything that can go wrong is turned into each API's own error shape here,
in one place. Authentication (when API keys are configured) is a middleware, so it also
covers unknown paths; only the probes (`/health`, `/metrics`) and the playground's static page
are open.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gemma_server import __version__
from gemma_server.api.errors import ApiError, from_domain, render
from gemma_server.api.observe import RequestObserver
from gemma_server.api.routes import lora_admin, openai, playground, workers_ai
from gemma_server.api.state import ServerState
from gemma_server.errors import GemmaServerError
from gemma_server.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)
OPEN_PATHS = frozenset({"/health", "/metrics", "/", "/playground"})  # no API key needed
OPEN_PREFIXES = (playground.STATIC_PREFIX + "/",)


def create_app(state: ServerState,
               on_startup: Callable[[ServerState], None] | None = None) -> FastAPI:
    """`on_startup(state)` runs once the server listens (the CLI loads the model there, so
    `/health` answers 503 while loading instead of refusing connections)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if on_startup is not None:
            on_startup(state)
        yield

    app = FastAPI(title="gemma_server", version=__version__, lifespan=lifespan,
                  description="Gemma on JAX, speaking the Workers AI and OpenAI APIs.")
    app.state.server = state
    if state.metrics is None:
        state.metrics = Metrics(state.engine_stats, state.names[0])
    app.include_router(workers_ai.router)
    app.include_router(openai.router)
    app.include_router(lora_admin.router)
    app.include_router(playground.router)
    app.mount(playground.STATIC_PREFIX, playground.static_files(), name="playground")
    _install_health(app, state)
    _install_auth(app, state)
    _install_error_handlers(app)
    app.add_middleware(RequestObserver, state=state)  # outermost: sees every response
    return app


def _install_health(app: FastAPI, state: ServerState) -> None:
    @app.get("/health", tags=["Operations"],
             summary="200 when the model is warm and its engine loop alive, else 503")
    async def health() -> Response:
        if state.ready:
            return JSONResponse({"status": "ready"})
        status = state.status if state.status != "ready" else "engine stopped"
        return JSONResponse({"status": status}, status_code=503, headers={"Retry-After": "1"})

    @app.get("/metrics", tags=["Operations"], summary="Prometheus metrics (text format)")
    async def metrics() -> Response:
        assert state.metrics is not None
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)


def _install_auth(app: FastAPI, state: ServerState) -> None:
    keys = [k.encode() for k in state.api_keys]

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Callable[[Request], Any]) -> Response:
        path = request.url.path
        if keys and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            given = token.strip().encode() if scheme.lower() == "bearer" else b""
            # compare_digest against every key: the time taken does not reveal which matched
            matched = [hmac.compare_digest(given, key) for key in keys]
            if not any(matched):
                return render(request, ApiError(
                    401, "Incorrect API key provided: send 'Authorization: Bearer <key>'.",
                    None, "invalid_api_key", 10000))
        response: Response = await call_next(request)
        return response


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return render(request, exc)

    @app.exception_handler(GemmaServerError)
    async def domain_error(request: Request, exc: GemmaServerError) -> JSONResponse:
        if exc.status >= 500:
            log.error("request failed: %s", exc)
        return render(request, from_domain(exc))

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request"}
        return render(request, ApiError(400, str(first.get("msg")), None, "invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: 3042, 405: 5019}.get(exc.status_code, 5006)
        message = {404: f"Not found: {request.method} {request.url.path}",
                   405: f"Method {request.method} not allowed on {request.url.path}"}.get(
            exc.status_code, str(exc.detail))
        return render(request, ApiError(exc.status_code, message, None, "not_found"
                                        if exc.status_code == 404 else None, code))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return render(request, ApiError(500, "internal server error", None, "internal_error",
                                        3007))
