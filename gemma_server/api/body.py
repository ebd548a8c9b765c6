"""Read a request body as strict JSON, whatever Content-Type the client sent.

Cloudflare's own curl examples post JSON as form data (no Content-Type), so the body is parsed
from bytes directly. Refused with a 4xx and a clear message: bodies over the size limit (413),
bytes that are not UTF-8, malformed or too deeply nested JSON, NaN/Infinity literals, and
anything but a JSON object at the top.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from gemma_server.api.errors import ApiError

MAX_DEPTH = 64


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _depth(value: Any, limit: int) -> int:
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            break
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"Request is too large (limit {max_bytes} bytes)", None,
                       "request_too_large", 3006)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"Request is too large (limit {max_bytes} bytes)", None,
                           "request_too_large", 3006)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise ApiError(400, "Request is missing a body: expected a JSON object", None,
                       "invalid_json", 3003)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "Request body is not valid UTF-8", None, "invalid_json") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ApiError(400, "Request body is nested too deeply", None, "invalid_json") from None
    except ValueError as exc:
        raise ApiError(400, f"Request body is not valid JSON: {exc}", None,
                       "invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "Request body must be a JSON object", None, "invalid_json")
    if _depth(data, MAX_DEPTH) > MAX_DEPTH:
        raise ApiError(400, "Request body is nested too deeply", None, "invalid_json")
    return data
