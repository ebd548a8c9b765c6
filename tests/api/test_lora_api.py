"""LoRA through the HTTP API: selection on both route families, listing, runtime loading."""

from __future__ import annotations

import json

import httpx
import numpy as np

from tests.api.conftest import API_KEY, LORA_DIR, MODEL


def golden(name: str) -> dict[str, np.ndarray]:
    with np.load(LORA_DIR / f"{name}.npz") as data:
        return dict(data)


def test_openai_model_name_selects_the_adapter_and_matches_peft(http, service):
    for served, folder in (("attn-lora", "attn"), ("all-lora", "all")):
        gold = golden(folder)
        prompt = gold["ids_0"].tolist()
        reply = http.post("/v1/completions", json={
            "model": served, "prompt": prompt, "max_tokens": 8, "temperature": 0,
            "ignore_eos": True})
        assert reply.status_code == 200, reply.text
        expected = service.tokenizer.decode(gold["greedy_0"].tolist())
        assert reply.json()["choices"][0]["text"] == expected
    base = http.post("/v1/completions", json={"model": MODEL, "prompt": prompt,
                                              "max_tokens": 8, "temperature": 0})
    assert base.json()["choices"][0]["text"] != expected


def test_workers_ai_lora_field_in_both_branches(http):
    def run(body):
        r = http.post(f"/ai/run/{MODEL}", content=json.dumps(body).encode())
        assert r.status_code == 200, r.text
        return r.json()["response"]

    chat = {"model": "all-lora", "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 10, "temperature": 0}
    via_openai = http.post("/v1/chat/completions", json=chat).json()
    text = via_openai["choices"][0]["message"]["content"]
    messages = {"messages": chat["messages"], "lora": "all-lora", "max_tokens": 10,
                "temperature": 0}
    assert run(messages) == text
    assert run({"prompt": "Hello", "lora": "all-lora", "max_tokens": 10, "temperature": 0}) \
        == text
    assert run({"prompt": "Hello", "max_tokens": 10, "temperature": 0}) != text


def test_runtime_load_use_and_unload(secured, service):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    url = secured.url
    assert httpx.post(f"{url}/v1/load_lora_adapter", json={
        "lora_name": "rs", "lora_path": str(LORA_DIR / "rslora")}).status_code == 401
    loaded = httpx.post(f"{url}/v1/load_lora_adapter", headers=auth, timeout=60, json={
        "lora_name": "rs", "lora_path": str(LORA_DIR / "rslora")})
    assert loaded.status_code == 200 and "added successfully" in loaded.text
    models = httpx.get(f"{url}/v1/models", headers=auth).json()["data"]
    assert "rs" in [m["id"] for m in models]
    reply = httpx.post(f"{url}/v1/completions", headers=auth, timeout=60, json={
        "model": "rs", "prompt": golden("rslora")["ids_1"].tolist(), "max_tokens": 8,
        "temperature": 0, "ignore_eos": True})
    assert reply.status_code == 200
    expected = service.tokenizer.decode(golden("rslora")["greedy_1"].tolist())
    assert reply.json()["choices"][0]["text"] == expected  # rsLoRA + patterns, as PEFT
    again = httpx.post(f"{url}/v1/load_lora_adapter", headers=auth, json={
        "lora_name": "rs", "lora_path": str(LORA_DIR / "rslora")})
    assert again.status_code == 400 and "already loaded" in again.text
    bad = httpx.post(f"{url}/v1/load_lora_adapter", headers=auth, json={
        "lora_name": "../evil", "lora_path": str(LORA_DIR / "rslora")})
    assert bad.status_code == 400 and "is not allowed" in bad.text
    missing = httpx.post(f"{url}/v1/load_lora_adapter", headers=auth, json={
        "lora_name": "nope", "lora_path": "/does/not/exist"})
    assert missing.status_code == 400 and "not found" in missing.text
    unloaded = httpx.post(f"{url}/v1/unload_lora_adapter", headers=auth,
                          json={"lora_name": "rs"}, timeout=60)
    assert unloaded.status_code == 200
    gone = httpx.post(f"{url}/v1/completions", headers=auth, json={
        "model": "rs", "prompt": "x", "max_tokens": 1})
    assert gone.status_code == 404
    assert httpx.post(f"{url}/v1/unload_lora_adapter", headers=auth,
                      json={"lora_name": "rs"}).status_code == 404


def test_runtime_routes_are_off_unless_enabled(http):
    response = http.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "y"})
    assert response.status_code == 404 and "--allow-runtime-lora" in response.text
