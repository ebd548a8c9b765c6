"""One request's story, for metrics and its log line.

The HTTP middleware opens a `RequestRecord` when a request arrives and closes it after the
last byte of the response; the route names the model and adapter; the service reports the
prompt, each generated token, the queue time and how generation ended. Closing it observes the
end-to-end latency, counts the outcome and writes the request's one log line. No prompt or
generated text is kept, and no headers (so no API key).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from gemma_server.metrics import Metrics

log = logging.getLogger("gemma_server.requests")


@dataclasses.dataclass
class RequestRecord:
    request_id: str
    method: str
    path: str
    metrics: Metrics | None = None
    started: float = dataclasses.field(default_factory=time.perf_counter)
    route: str | None = None  # the route's template, once routed
    model: str | None = None
    adapter: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int = 0
    first_token_at: float | None = None
    last_token_at: float | None = None
    finish_reasons: list[str] = dataclasses.field(default_factory=list)
    error_type: str | None = None
    status: int | None = None
    closed: bool = False

    # --- reported while the request runs -------------------------------------------------------

    def generation_started(self, model: str, adapter: str | None, prompt_tokens: int) -> None:
        """One prompt queued (a completions request may carry several)."""
        self.model, self.adapter = model, adapter
        self.prompt_tokens = (self.prompt_tokens or 0) + prompt_tokens
        if self.metrics:
            self.metrics.prompt_tokens.inc(prompt_tokens)
            self.metrics.adapter_requests.labels(adapter or "none").inc()

    def admitted(self, queue_seconds: float) -> None:
        if self.metrics:
            self.metrics.queue_time.observe(queue_seconds)

    def token(self) -> None:
        now = time.perf_counter()
        self.completion_tokens += 1
        if self.metrics:
            if self.last_token_at is None:
                self.metrics.time_to_first_token.observe(now - self.started)
            else:
                self.metrics.inter_token_latency.observe(now - self.last_token_at)
            self.metrics.generation_tokens.inc()
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now

    def choice_finished(self, reason: str) -> None:
        self.finish_reasons.append(reason)
        if self.metrics:
            self.metrics.finished.labels(reason).inc()

    def failed(self, error_type: str) -> None:
        """The answer is an error (an error response, or an error event mid-stream)."""
        if self.error_type is None:
            self.error_type = error_type
            if self.metrics:
                self.metrics.errors.labels(error_type).inc()

    # --- the end -------------------------------------------------------------------------------

    def close(self, write_log: bool = True) -> dict[str, Any]:
        """Observe the totals and write the log line (once); returns the line's fields."""
        fields = self.fields()
        if self.closed:
            return fields
        self.closed = True
        if self.metrics:
            self.metrics.requests.labels(self.route or "unmatched", str(self.status)).inc()
            if self.model is not None:
                self.metrics.e2e_latency.observe(fields["total_ms"] / 1000)
        if write_log:
            log.info("request", extra=fields)
        return fields

    def fields(self) -> dict[str, Any]:
        now = time.perf_counter()
        ttft = None if self.first_token_at is None else self.first_token_at - self.started
        return {
            "request_id": self.request_id, "method": self.method,
            "route": self.route or self.path, "model": self.model, "adapter": self.adapter,
            "status": self.status, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_ms": None if ttft is None else round(ttft * 1000, 1),
            "total_ms": round((now - self.started) * 1000, 1),
            "finish_reason": ",".join(self.finish_reasons) or None,
            "error_type": self.error_type,
        }
