"""Errors, limits, auth, health, concurrency and disconnects, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest

from tests.api.conftest import API_KEY, MODEL, wait_idle

CHAT = "/v1/chat/completions"


def chat_body(**kw):
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], **kw}


@pytest.mark.parametrize("raw, status, fragment", [
    (b'{"messages":', 400, "not valid JSON"),
    (b"[]", 400, "JSON object"),
    (b'"x"', 400, "JSON object"),
    (b"\xff\xfe{}", 400, "UTF-8"),
    (b'{"model": "m", "temperature": NaN}', 400, "NaN"),
    (b"[" * 5000 + b"]" * 5000, 400, "nested"),
    (b"", 400, "missing a body"),
])
def test_malformed_bodies_are_clear_4xx_on_both_families(http, raw, status, fragment):
    for path in (CHAT, f"/ai/run/{MODEL}"):
        response = http.post(path, content=raw)
        assert response.status_code == status, (path, response.text)
        assert fragment in response.text
        body = response.json()
        assert ("error" in body) if path == CHAT else (body["success"] is False)


def test_body_too_large_is_413(http):
    big = json.dumps(chat_body(messages=[{"role": "user", "content": "x" * 100_000}]))
    response = http.post(CHAT, content=big)
    assert response.status_code == 413 and response.json()["error"]["code"] == \
        "request_too_large"
    cf = http.post(f"/ai/run/{MODEL}", content=json.dumps({"prompt": "x" * 100_000}))
    assert cf.status_code == 413 and cf.json()["errors"][0]["code"] == 3006


def test_unknown_routes_and_methods_answer_in_the_family_shape(http):
    assert http.get("/v1/nothing").json()["error"]["code"] == "not_found"
    assert http.get(f"/ai/run/{MODEL}").status_code == 405
    assert http.get(f"/ai/run/{MODEL}").json()["success"] is False


def test_missing_max_tokens_takes_the_room_left(http, service):
    response = http.post(CHAT, json=chat_body(temperature=0, extra_field=1,
                                              ignore_eos=True))
    assert response.status_code == 200
    usage = response.json()["usage"]
    assert usage["total_tokens"] == service.max_total_tokens
    assert response.json()["choices"][0]["finish_reason"] == "length"


def test_streaming_options_without_stream_and_suffix(http):
    assert http.post(CHAT, json=chat_body(stream_options={"include_usage": True})) \
        .json()["error"]["param"] is not None
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "suffix": "y"})
    assert r.status_code == 400 and "suffix" in r.json()["error"]["message"]


def test_health_is_open_and_ready(secured):
    assert httpx.get(f"{secured.url}/health").status_code == 200


def test_api_key_is_required_everywhere_else(secured):
    url = secured.url
    denied = httpx.post(f"{url}{CHAT}", json=chat_body(max_tokens=1))
    assert denied.status_code == 401
    assert denied.json()["error"]["code"] == "invalid_api_key"
    wrong = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    cf = httpx.post(f"{url}/ai/run/{MODEL}", json={"prompt": "Hi"})
    assert cf.status_code == 401 and cf.json()["errors"][0]["code"] == 10000
    for key in (API_KEY, "second-key"):
        ok = httpx.post(f"{url}{CHAT}", json=chat_body(max_tokens=1),
                        headers={"Authorization": f"Bearer {key}"}, timeout=60)
        assert ok.status_code == 200


def test_sixteen_concurrent_streams_all_finish_with_done(server, service):
    async def one(client: httpx.AsyncClient, i: int) -> str:
        body = chat_body(max_tokens=12 + i, temperature=0.8, seed=i, stream=True)
        async with client.stream("POST", CHAT, json=body) as response:
            assert response.status_code == 200
            text = (await response.aread()).decode()
        return text

    async def main() -> list[str]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            return await asyncio.gather(*[one(client, i) for i in range(16)])

    for text in asyncio.run(main()):
        assert text.endswith("data: [DONE]\n\n")
    assert wait_idle(service)["decoding"] == 0


def test_a_client_that_drops_mid_stream_frees_its_slot(server, service):
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps(chat_body(max_tokens=200, ignore_eos=True, stream=True)).encode()
    request = (f"POST {CHAT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(request)
        received = b""
        while received.count(b"data: ") < 3:
            received += sock.recv(4096)
    stats = wait_idle(service)
    assert stats["decoding"] == 0 and stats["free_slots"] == 16
    after = httpx.post(f"{server.url}{CHAT}", json=chat_body(max_tokens=2), timeout=60)
    assert after.status_code == 200


def test_a_client_that_drops_a_non_streamed_request_cancels_it(server, service):
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps(chat_body(max_tokens=200, ignore_eos=True)).encode()
    request = (f"POST {CHAT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(request)
        for _ in range(200):
            if service.engine.stats()["decoding"]:
                break
            asyncio.run(asyncio.sleep(0.01))
    stats = wait_idle(service)
    assert stats["decoding"] == 0 and stats["free_slots"] == 16


def test_a_failure_after_the_headers_is_one_error_event_without_done(server, service,
                                                                     monkeypatch):
    real, calls = service.engine.executor.launch_decode, {"n": 0}

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 2:  # after the prefill's token and a first decode call's tokens
            raise RuntimeError("device lost")
        return real(*args)

    monkeypatch.setattr(service.engine.executor, "launch_decode", failing)
    for path, body in ((CHAT, chat_body(max_tokens=20, ignore_eos=True, stream=True)),
                       (f"/ai/run/{MODEL}", {"prompt": "Hi", "max_tokens": 20, "stream": True,
                                            "temperature": 0})):
        calls["n"] = 0
        response = httpx.post(f"{server.url}{path}", json=body, timeout=60)
        assert response.status_code == 200
        events = [e for e in response.text.split("\n\n") if e.startswith("data: ")]
        assert "[DONE]" not in response.text
        assert "device lost" in events[-1] and "error" in json.loads(events[-1][6:])
    assert wait_idle(service)["decoding"] == 0


def test_overload_is_429_with_retry_after(tiny_dir):
    """A one-slot, no-queue server: a second concurrent request is refused at once."""
    from gemma_server.api import ServerState
    from gemma_server.config import EngineConfig
    from gemma_server.engine.engine import Engine
    from gemma_server.loading import load_model
    from gemma_server.service import ModelService
    from tests.api.conftest import start_server

    model = load_model(tiny_dir(MODEL), progress=False)
    config = EngineConfig(max_batch_size=1, max_total_tokens=256, max_input_length=200,
                          max_batch_prefill_tokens=32, prefill_buckets=(32,),
                          prefill_batch_sizes=(1,), max_waiting=0)
    engine = Engine(model.checkpoint.params, model.checkpoint.config, config)
    engine.start()
    service = ModelService(MODEL, model.tokenizer, engine, model.stop_ids)
    running = start_server(ServerState(names=[MODEL], service=service, status="ready"))
    try:
        with httpx.Client(base_url=running.url, timeout=60) as client, client.stream(
                "POST", CHAT, json=chat_body(max_tokens=200, ignore_eos=True,
                                             stream=True)) as first:
            next(first.iter_lines())  # the first request holds the only slot
            for path, body in ((CHAT, chat_body(max_tokens=2)),
                               (f"/ai/run/{MODEL}", {"prompt": "Hi", "max_tokens": 2})):
                refused = client.post(path, json=body)
                assert refused.status_code == 429 and refused.headers["retry-after"]
                error = refused.json()
                assert error["error"]["code"] == "overloaded" if path == CHAT else \
                    error["errors"][0]["code"] == 3040
    finally:
        running.stop()
        engine.stop()


def test_openapi_document_and_docs_page(http):
    document = http.get("/openapi.json")
    assert document.status_code == 200 and "$defs" not in document.text
    paths = document.json()["paths"]
    assert {"/v1/chat/completions", "/ai/run/{model}", "/health"} <= set(paths)
    assert http.get("/docs").status_code == 200
