"""Log output: text for people or one JSON object a line for log pipelines (`--log-format`).

Both carry the same fields: a request's log line (telemetry.py) passes its fields as `extra`,
which the JSON format writes as top-level keys and the text format as `key=value` after the
message. Every line goes through a redaction step that masks the configured API keys, so a
key can never reach the logs, whatever a library or an exception message prints.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from pythonjsonlogger.json import JsonFormatter

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName", "color_message"}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller passed as `extra=`."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{k}={_text(v)}" for k, v in extras(record).items())
        return f"{line} {fields}" if fields else line


def _text(value: Any) -> str:
    text = "-" if value is None else str(value)
    return f'"{text}"' if " " in text or not text else text


class _Redacting(logging.Formatter):
    """Formats with `inner`, then masks every secret."""

    def __init__(self, inner: logging.Formatter, secrets: Sequence[str]):
        super().__init__()
        self.inner = inner
        self.secrets = [s for s in secrets if s]

    def format(self, record: logging.LogRecord) -> str:
        line = self.inner.format(record)
        for secret in self.secrets:
            line = line.replace(secret, "***")
        return line


def formatter(fmt: str, secrets: Sequence[str] = ()) -> logging.Formatter:
    inner: logging.Formatter = TextFormatter() if fmt == "text" else JsonFormatter(
        "{asctime}{levelname}{name}{message}", style="{",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})
    return _Redacting(inner, secrets)


def configure_logging(level: str, fmt: str = "text", secrets: Sequence[str] = ()) -> None:
    """One handler on the root logger (stderr); uvicorn's loggers propagate to it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt, secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
