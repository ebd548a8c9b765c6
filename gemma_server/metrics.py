"""Prometheus metrics, all named `gemma_server_*`, served at `/metrics`.

Each server (each `create_app`) owns a registry, so several apps in one process (the tests)
never share counts. Request-level instruments are fed by `telemetry.RequestRecord`; the
engine's gauges (running, waiting, KV slots, compilations after warm-up) are read from the
engine when Prometheus scrapes, so they are never stale. Labels stay bounded: finish reasons,
error types, route templates, status codes and adapter names (at most `--max-loras`), never
request ids or text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "gemma_server"
# Seconds. TTFT and end-to-end span a fast prefill on a GPU to a long queue on a laptop.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0, 160.0, 320.0, 640.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                 0.5, 0.75, 1.0, 2.5, 5.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST

EngineStats = Callable[[], dict[str, int] | None]


class Metrics:
    """The server's instruments. `engine_stats()` returns `Engine.stats()` or None before the
    engine exists."""

    def __init__(self, engine_stats: EngineStats, model: str):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"{PREFIX}_{name}", doc, buckets=buckets, registry=r)

        self.time_to_first_token = histogram(
            "time_to_first_token_seconds", "Request received to first generated token.",
            REQUEST_BUCKETS)
        self.inter_token_latency = histogram(
            "inter_token_latency_seconds", "Time between consecutive tokens of a request.",
            TOKEN_BUCKETS)
        self.e2e_latency = histogram(
            "e2e_request_latency_seconds", "Request received to its last byte sent.",
            REQUEST_BUCKETS)
        self.queue_time = histogram(
            "request_queue_time_seconds", "Time a request waited for a decode slot.",
            REQUEST_BUCKETS)
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens admitted.",
                                     registry=r)
        self.generation_tokens = Counter(f"{PREFIX}_generation_tokens",
                                         "Tokens generated.", registry=r)
        self.requests = Counter(f"{PREFIX}_requests", "HTTP requests by route and status.",
                                ["route", "status"], registry=r)
        self.finished = Counter(f"{PREFIX}_request_finished",
                                "Generations ended, by finish reason (stop, length, "
                                "cancelled, error).", ["finish_reason"], registry=r)
        self.errors = Counter(f"{PREFIX}_request_errors",
                              "Requests answered with an error, by error type.",
                              ["error_type"], registry=r)
        self.adapter_requests = Counter(f"{PREFIX}_adapter_requests",
                                        "Generation requests by LoRA adapter (base: none).",
                                        ["adapter"], registry=r)
        Info(f"{PREFIX}_model", "The served model.", registry=r).info({"name": model})
        r.register(_EngineCollector(engine_stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector(Collector):
    """Engine gauges read at scrape time."""

    def __init__(self, engine_stats: EngineStats):
        self._stats = engine_stats

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families depend on whether the engine exists yet

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if stats is None:
            return
        slots = stats["slots"]
        used = slots - stats["free_slots"]
        yield _gauge("num_requests_running", "Requests prefilling or decoding.",
                     stats["requests"] - stats["waiting"])
        yield _gauge("num_requests_waiting", "Requests queued for a decode slot.",
                     stats["waiting"])
        yield _gauge("kv_slots_used", "KV-cache slots (sequences) in use.", used)
        yield _gauge("kv_slots_total", "KV-cache slots (sequences) in all.", slots)
        yield _gauge("kv_cache_usage_ratio", "Fraction of KV-cache slots in use.",
                     used / slots if slots else 0.0)
        family = CounterMetricFamily(
            f"{PREFIX}_compilations_after_warm_up",
            "XLA compilations since warm-up ended (expected 0: every shape is compiled ahead).")
        family.add_metric([], stats["compilations_after_warm_up"])
        yield family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)
