"""The `stop` field shared by both APIs' schemas."""

from __future__ import annotations

from typing import Any


def check_stops(value: Any) -> Any:
    """`stop`: a string or at most 4 strings, none empty (OpenAI's rule, used by both APIs)."""
    stops = [value] if isinstance(value, str) else (value or [])
    if len(stops) > 4:
        raise ValueError("at most 4 stop sequences are allowed")
    if any(s == "" for s in stops):
        raise ValueError("stop sequences must not be empty")
    return value


def stop_tuple(value: str | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)
