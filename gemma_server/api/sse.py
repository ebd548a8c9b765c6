"""Server-Sent Events framing shared by every streaming route.

Each event is `data: <compact JSON>\n\n` (never `\r\n`, never an `event:` line: the OpenAI
clients and naive Workers AI consumers both depend on that), keep-alives are SSE comments, and
a successful stream ends with exactly `data: [DONE]`. sse-starlette notices a disconnected
client promptly and cancels the generator, which cancels the request in the engine.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import EventSourceResponse

DONE = "[DONE]"
PING_SECONDS = 15


def encode(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def event_stream(events: AsyncIterator[str]) -> EventSourceResponse:
    """`events` yields the data of each event (already JSON, or DONE)."""
    return EventSourceResponse(events, sep="\n", ping=PING_SECONDS,
                               headers={"Cache-Control": "no-cache"})
