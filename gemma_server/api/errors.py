"""The one place errors become HTTP responses, in each API's own shape.

OpenAI routes: `{"error": {"message", "type", "param", "code"}}`. Workers AI routes:
`{"result": null, "success": false, "errors": [{"code", "message"}], "messages": []}` with
Cloudflare's numeric codes. Which shape is chosen by the request path.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from gemma_server.errors import (
    ContextTooLong,
    EngineFailure,
    GemmaServerError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    Unauthorized,
)

RETRY_AFTER_SECONDS = "1"


class ApiError(Exception):
    """An error raised by the API layer itself, with everything both shapes need."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, workers_ai_code: int = 5006):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.code, self.workers_ai_code = code, workers_ai_code


def is_workers_ai(request: Request) -> bool:
    path = request.url.path
    return path.startswith("/ai/run") or path.startswith("/client/v4/")


def _openai_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def openai_body(status: int, message: str, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": _openai_type(status), "param": param,
                      "code": code}}


def workers_ai_body(code: int, message: str) -> dict:
    return {"result": None, "success": False, "errors": [{"code": code, "message": message}],
            "messages": []}


def render(request: Request, error: ApiError) -> JSONResponse:
    record = getattr(request.state, "record", None)
    if record is not None:  # telemetry.RequestRecord: counts the error by type
        record.failed(error.code or f"http_{error.status}")
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if error.status in (429, 503) else None
    if is_workers_ai(request):
        message = error.message
        if error.workers_ai_code in (5006, 5007) and not message.startswith("AiError"):
            message = f"AiError: Bad input: {message}" if error.workers_ai_code == 5006 \
                else f"AiError: {message}"
        body = workers_ai_body(error.workers_ai_code, message)
    else:
        body = openai_body(error.status, error.message, error.param, error.code)
    return JSONResponse(body, status_code=error.status, headers=headers)


def from_domain(error: GemmaServerError) -> ApiError:
    """Map the project's error hierarchy onto statuses and both APIs' codes."""
    message = str(error) or error.__class__.__name__
    if isinstance(error, ContextTooLong):
        return ApiError(400, message, "messages", "context_length_exceeded", 5006)
    if isinstance(error, ModelNotFound):
        return ApiError(404, message, "model", "model_not_found", 5007)
    if isinstance(error, Unauthorized):
        return ApiError(401, message, None, "invalid_api_key", 10000)
    if isinstance(error, Overloaded):
        return ApiError(429, message, None, "overloaded", 3040)
    if isinstance(error, InvalidRequest):
        return ApiError(400, message, None, error.code, 5006)
    if isinstance(error, EngineFailure):
        return ApiError(500, message, None, "engine_failure", 3007)
    return ApiError(500, "internal server error", None, "internal_error", 3007)
