"""Workers AI routes through a real server with raw httpx: schema bounds, shapes, streams."""

from __future__ import annotations

import json

import pytest

from tests.api.conftest import ALIAS, MODEL

RUN = f"/ai/run/{ALIAS}"
REST = f"/client/v4/accounts/abc123/ai/run/{ALIAS}"


def post(http, path, body, **kw):
    # Cloudflare's own curl examples send JSON without a Content-Type: so do we.
    return http.post(path, content=json.dumps(body).encode(), **kw)


def sse_events(text: str) -> list[str]:
    assert "\r" not in text
    assert text.endswith("\n\n")
    events = [e for e in text.split("\n\n") if e]
    for event in events:
        assert event.startswith("data: ") or event.startswith(":"), event
    return [e[len("data: "):] for e in events if e.startswith("data: ")]


def test_prompt_branch_bare_and_rest_envelope(http):
    body = {"prompt": "Tell me a story", "max_tokens": 8, "temperature": 0}
    bare = post(http, RUN, body)
    assert bare.status_code == 200, bare.text
    data = bare.json()
    assert set(data) == {"response", "usage"} and isinstance(data["response"], str)
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= 8
    rest = post(http, REST, body).json()
    assert rest == {"result": data, "success": True, "errors": [], "messages": []}


def test_messages_branch_with_system_prompt(http):
    body = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Hello"}], "max_tokens": 5,
            "temperature": 0}
    response = post(http, f"/ai/run/{MODEL}", body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] >= 1


def test_streamed_text_equals_non_streamed_text(http):
    for route in (RUN, REST):
        body = {"prompt": "naïve café 日本語", "max_tokens": 24, "temperature": 0}
        full = post(http, route, body).json()
        full = full.get("result", full)
        streamed = post(http, route, {**body, "stream": True})
        assert streamed.status_code == 200
        assert streamed.headers["content-type"].startswith("text/event-stream")
        events = sse_events(streamed.text)
        assert events[-1] == "[DONE]"
        payloads = [json.loads(e) for e in events[:-1]]
        assert payloads[-1]["response"] == "" and payloads[-1]["usage"] == full["usage"]
        assert "".join(p["response"] for p in payloads) == full["response"]


def test_raw_prompt_gets_exactly_one_bos(http):
    plain = post(http, RUN, {"prompt": "Hello", "raw": True, "max_tokens": 1}).json()
    with_bos = post(http, RUN, {"prompt": "<bos>Hello", "raw": "true", "max_tokens": 1}).json()
    templated = post(http, RUN, {"prompt": "Hello", "max_tokens": 1}).json()
    assert plain["usage"]["prompt_tokens"] == with_bos["usage"]["prompt_tokens"]
    assert templated["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]


INSIDE_OUTSIDE = [
    ("temperature", 5, 5.01), ("temperature", 0, -0.01),
    ("top_p", 2, 2.01), ("top_p", 0, -0.1),
    ("top_k", 1, 0), ("top_k", 50, 51),
    ("seed", 1, 0), ("seed", 9_999_999_999, 10_000_000_000),
    ("repetition_penalty", 2, 2.01), ("repetition_penalty", 0, -0.01),
    ("frequency_penalty", 2, 2.5), ("frequency_penalty", 0, -0.1),
    ("presence_penalty", 2, 2.1), ("presence_penalty", 0, -1),
    ("max_tokens", 1, 0),
]


@pytest.mark.parametrize("route", [RUN, REST])
@pytest.mark.parametrize("field, inside, outside", INSIDE_OUTSIDE)
def test_schema_bounds(http, route, field, inside, outside):
    base = {"prompt": "Hi", "max_tokens": 2}
    ok = post(http, route, {**base, field: inside})
    assert ok.status_code == 200, ok.text
    bad = post(http, route, {**base, field: outside})
    assert bad.status_code == 400
    error = bad.json()
    assert error["success"] is False and error["result"] is None
    assert error["errors"][0]["code"] == 5006
    assert field in error["errors"][0]["message"]


def test_text_length_bounds(http):
    assert post(http, RUN, {"prompt": "a" * 6145, "max_tokens": 1}).status_code == 400
    msg = {"messages": [{"role": "user", "content": "b" * 6145}], "max_tokens": 1}
    assert post(http, RUN, msg).status_code == 400
    assert post(http, RUN, {"prompt": "", "max_tokens": 1}).status_code == 400
    # 6144 characters pass the schema; the token limit is then the model's (TGI's) check.
    long = post(http, RUN, {"prompt": "a" * 6144, "max_tokens": 1})
    assert long.status_code == 400
    assert "`inputs` tokens" in long.json()["errors"][0]["message"]


@pytest.mark.parametrize("body, fragment", [
    ({"prompt": "Hi", "temperature": "0.7"}, "temperature"),
    ({"prompt": "Hi", "stream": "yes"}, "stream"),
    ({"prompt": "Hi", "max_tokens": 1.5}, "max_tokens"),
    ({"prompt": "Hi", "messages": [{"role": "user", "content": "x"}]}, "2 matches"),
    ({"max_tokens": 3}, "0 matches"),
    ({"messages": [{"role": "user", "content": ["x"]}]}, "content"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "tool"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
     "alternate"),
])
def test_bad_input_is_5006_with_the_reason(http, body, fragment):
    response = post(http, RUN, body)
    assert response.status_code == 400, response.text
    error = response.json()["errors"][0]
    assert error["code"] == 5006 and fragment in error["message"]


def test_unknown_model_and_lora(http):
    unknown = post(http, "/ai/run/@cf/meta/llama-3", {"prompt": "Hi"})
    assert unknown.status_code == 400
    assert unknown.json()["errors"][0]["code"] == 5007
    lora = post(http, RUN, {"prompt": "Hi", "lora": "my-finetune"})
    assert lora.status_code == 400 and lora.json()["errors"][0]["code"] == 5007
    assert "No such LoRA adapter my-finetune" in lora.json()["errors"][0]["message"]


def test_token_limits_use_tgi_wording(http):
    total = post(http, RUN, {"prompt": "Hi", "max_tokens": 300})
    assert total.status_code == 400
    message = total.json()["errors"][0]["message"]
    assert "`inputs` tokens + `max_new_tokens` must be <= 256" in message
    assert "300 `max_new_tokens`" in message
