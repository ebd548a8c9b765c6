"""What operators read off a running server: `/metrics`, request ids, per-request log lines
and the drain gate. Metrics are compared before and after (the server is shared)."""

from __future__ import annotations

import json
import logging
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gemma_server.api import ServerState
from gemma_server.logs import formatter
from tests.api.conftest import API_KEY, MODEL, start_server, wait_idle


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, labels): value}."""
    reply = httpx.get(f"{url}/metrics", timeout=30)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(reply.text) for s in family.samples}


def moved(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def _steps(tokens: object, positions: object, budgets: object = None) -> int:
    """Decode steps a `launch_decode` call runs."""
    return 1 if budgets is None else int(budgets.max())  # type: ignore[attr-defined]


def chat(http: httpx.Client, stream: bool = False, model: str = MODEL, **extra: object) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": "Tell me a story"}],
            "max_tokens": 6, "ignore_eos": True, **extra}
    if not stream:
        reply = http.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        return reply.json()["usage"]
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/chat/completions", json=body) as reply:
        data = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return json.loads(data[-2])["usage"]


def test_histograms_and_counters_move_with_requests(server, service, http):
    wait_idle(service)
    before = scrape(server.url)
    usages = [chat(http), chat(http, stream=True), chat(http, model="attn-lora")]
    bad = http.post("/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert bad.status_code == 400
    wait_idle(service)
    after = scrape(server.url)

    prompt = sum(u["prompt_tokens"] for u in usages)
    generated = sum(u["completion_tokens"] for u in usages)
    assert generated == 18
    assert moved(before, after, "gemma_server_prompt_tokens_total") == prompt
    assert moved(before, after, "gemma_server_generation_tokens_total") == generated
    for histogram in ("time_to_first_token", "e2e_request_latency", "request_queue_time"):
        assert moved(before, after, f"gemma_server_{histogram}_seconds_count") == 3
        assert moved(before, after, f"gemma_server_{histogram}_seconds_sum") > 0
    # one gap between each pair of consecutive tokens of a request
    assert moved(before, after, "gemma_server_inter_token_latency_seconds_count") == \
        generated - 3
    assert moved(before, after, "gemma_server_request_finished_total",
                 finish_reason="length") == 3
    assert moved(before, after, "gemma_server_requests_total",
                 route="/v1/chat/completions", status="200") == 3
    assert moved(before, after, "gemma_server_requests_total",
                 route="/v1/chat/completions", status="400") == 1
    code = bad.json()["error"]["code"]  # errors are counted by the code the client saw
    assert moved(before, after, "gemma_server_request_errors_total", error_type=code) == 1
    assert moved(before, after, "gemma_server_adapter_requests_total", adapter="attn-lora") == 1
    assert moved(before, after, "gemma_server_adapter_requests_total", adapter="none") == 2
    # gauges read from the engine at scrape time
    assert after[("gemma_server_kv_slots_total", ())] == service.engine.executor.slots
    assert after[("gemma_server_num_requests_running", ())] == 0
    # serving compiled nothing (the counter is per process: other tests' jits count too)
    assert moved(before, after, "gemma_server_compilations_after_warm_up_total") == 0
    # no unbounded labels: no request ids, no text
    labels = {v for _, pairs in after for _, v in pairs}
    assert not any("story" in v or len(v) > 40 for v in labels)


def test_gauges_show_a_running_stream(server, service, http, monkeypatch):
    wait_idle(service)
    # 10 ms a step: the stream outlasts several scrapes however fast the engine is.
    launch = service.engine.executor.launch_decode
    monkeypatch.setattr(service.engine.executor, "launch_decode",
                        lambda *args: (time.sleep(0.01 * _steps(*args)), launch(*args))[1])
    seen: list[dict] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(scrape(server.url))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        chat(http, stream=True, max_tokens=60)
    finally:
        done.set()
        watcher.join()
    assert any(s[("gemma_server_num_requests_running", ())] == 1 and
               s[("gemma_server_kv_slots_used", ())] >= 1 for s in seen)


def test_request_id_is_kept_or_made_on_every_response(server, secured, http):
    given = http.get("/v1/models", headers={"X-Request-Id": "trace-42.a"})
    assert given.headers["x-request-id"] == "trace-42.a"
    made = http.post("/v1/chat/completions", json={"model": "nope", "messages": []})
    assert made.status_code in (400, 404) and len(made.headers["x-request-id"]) == 32
    insane = http.get("/v1/models", headers={"X-Request-Id": "has spaces " + "x" * 200})
    assert insane.headers["x-request-id"] != "has spaces " + "x" * 200
    with http.stream("POST", "/ai/run/" + MODEL, headers={"X-Request-Id": "stream-1"},
                     json={"prompt": "Hi", "max_tokens": 2, "stream": True}) as reply:
        assert reply.headers["x-request-id"] == "stream-1"
    refused = httpx.get(f"{secured.url}/v1/models", headers={"X-Request-Id": "no-key"})
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "no-key"


def test_one_log_line_per_request_without_text_or_key(secured, service, caplog):
    caplog.set_level(logging.INFO, logger="gemma_server.requests")
    headers = {"Authorization": f"Bearer {API_KEY}", "X-Request-Id": "log-me"}
    reply = httpx.post(f"{secured.url}/v1/chat/completions", headers=headers, timeout=60,
                       json={"model": MODEL, "max_tokens": 3, "ignore_eos": True,
                             "messages": [{"role": "user", "content": "a secret plan"}]})
    assert reply.status_code == 200
    httpx.get(f"{secured.url}/health")  # a probe: no line
    lines = [r for r in caplog.records if r.name == "gemma_server.requests"]
    assert not any(r.route == "/health" for r in lines)
    # (An earlier test's stream, closed unread, may still end and log meanwhile.)
    mine = [r for r in lines if r.request_id == "log-me"]
    assert len(mine) == 1
    record = mine[0]
    fields = {k: getattr(record, k) for k in (
        "request_id", "route", "model", "adapter", "status", "prompt_tokens",
        "completion_tokens", "ttft_ms", "total_ms", "finish_reason")}
    assert fields["request_id"] == "log-me" and fields["route"] == "/v1/chat/completions"
    assert fields["model"] == MODEL and fields["status"] == 200
    assert fields["completion_tokens"] == 3 and fields["finish_reason"] == "length"
    assert fields["prompt_tokens"] == reply.json()["usage"]["prompt_tokens"]
    assert 0 < fields["ttft_ms"] <= fields["total_ms"]
    for fmt in ("text", "json"):
        line = formatter(fmt, secrets=[API_KEY]).format(record)
        assert "secret plan" not in line and API_KEY not in line and "log-me" in line
    parsed = json.loads(formatter("json").format(record))
    assert parsed["message"] == "request" and parsed["completion_tokens"] == 3
    assert parsed["level"] == "INFO" and parsed["logger"] == "gemma_server.requests"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_api_keys_are_masked_in_every_log_line(fmt):
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "header was Bearer %s",
                               (API_KEY,), None)
    line = formatter(fmt, secrets=[API_KEY]).format(record)
    assert API_KEY not in line and "Bearer ***" in line


def test_a_draining_server_refuses_new_work_in_each_api_shape(service):
    state = ServerState(names=[MODEL], service=service, status="draining")
    running = start_server(state)
    try:
        openai = httpx.post(f"{running.url}/v1/chat/completions", json={"model": MODEL})
        assert openai.status_code == 503 and openai.headers["retry-after"]
        assert openai.json()["error"]["code"] == "server_shutting_down"
        workers = httpx.post(f"{running.url}/ai/run/{MODEL}", json={"prompt": "Hi"})
        assert workers.status_code == 503 and workers.json()["errors"][0]["code"] == 3040
        health = httpx.get(f"{running.url}/health")
        assert health.status_code == 503 and health.json() == {"status": "draining"}
        assert httpx.get(f"{running.url}/metrics").status_code == 200
    finally:
        running.stop()
