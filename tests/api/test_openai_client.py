"""OpenAI routes through the official `openai` Python client against a real server."""

from __future__ import annotations

import openai
import pytest

from tests.api.conftest import ALIAS, MODEL


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def chat(client, **kw):
    kw.setdefault("model", MODEL)
    kw.setdefault("messages", [{"role": "user", "content": "Tell me a story"}])
    return client.chat.completions.create(**kw)


def test_chat_non_streamed_shape_and_usage(client):
    result = chat(client, max_tokens=8, temperature=0)
    assert result.object == "chat.completion" and result.id.startswith("chatcmpl-")
    assert result.model == MODEL
    choice = result.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert result.usage.completion_tokens <= 8
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


def test_chat_stream_equals_non_stream_and_reports_usage(client):
    full = chat(client, max_tokens=16, temperature=0)
    stream = chat(client, max_tokens=16, temperature=0, stream=True,
                  stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and
                c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == full.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])


def test_n_choices_and_seeds(client):
    a = chat(client, max_tokens=10, temperature=1.0, seed=1234, n=3)
    b = chat(client, max_tokens=10, temperature=1.0, seed=1234, n=3)
    c = chat(client, max_tokens=10, temperature=1.0, seed=4321, n=3)
    texts = [ch.message.content for ch in a.choices]
    assert [ch.index for ch in a.choices] == [0, 1, 2]
    assert texts == [ch.message.content for ch in b.choices]
    assert texts != [ch.message.content for ch in c.choices]
    assert len(set(texts)) > 1


def test_stop_strings_are_never_in_the_output(client):
    full = chat(client, max_tokens=30, temperature=0).choices[0].message.content
    assert len(full) > 6
    stop = full[4:7]
    cut = full[:full.index(stop)]
    result = chat(client, max_tokens=30, temperature=0, stop=[stop, "zzzz"])
    assert result.choices[0].message.content == cut
    assert result.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in chat(
        client, max_tokens=30, temperature=0, stop=stop, stream=True) if c.choices)
    assert streamed == cut


def test_logprobs(client):
    result = chat(client, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    content = result.choices[0].logprobs.content
    assert len(content) == result.usage.completion_tokens or len(content) >= 1
    for item in content:
        assert len(item.top_logprobs) == 3
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob, abs=1e-5)
        assert item.logprob <= 0


def test_completions_stream_and_not(client):
    full = client.completions.create(model=ALIAS, prompt="Once upon a time", max_tokens=12,
                                     temperature=0, echo=False)
    assert full.object == "text_completion" and full.choices[0].finish_reason == "length"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=ALIAS, prompt="Once upon a time", max_tokens=12, temperature=0, stream=True))
    assert streamed == full.choices[0].text
    echo = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=3,
                                     temperature=0, echo=True)
    assert echo.choices[0].text.startswith("Once upon a time")
    many = client.completions.create(model=MODEL, prompt=["a", "b"], n=2, max_tokens=2)
    assert sorted(c.index for c in many.choices) == [0, 1, 2, 3]


def test_models_list_and_retrieve_with_slashes(client):
    models = {m.id: m for m in client.models.list()}
    assert list(models) == [MODEL, ALIAS, "attn-lora", "all-lora"]
    assert models["attn-lora"].model_extra["parent"] == MODEL
    assert models[MODEL].model_extra["parent"] is None
    assert client.models.retrieve(ALIAS).id == ALIAS
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_errors_map_to_the_client_exceptions(client):
    with pytest.raises(openai.NotFoundError) as unknown:
        chat(client, model="gpt-4")
    assert unknown.value.body["code"] == "model_not_found"
    for bad in ({"temperature": 2.5}, {"top_p": 1.5}, {"n": 0}, {"max_tokens": 0},
                {"stop": ["a", "b", "c", "d", "e"]}, {"top_logprobs": 3},
                {"messages": []}, {"presence_penalty": -3},
                {"messages": [{"role": "user", "content": [{"type": "image_url",
                                                            "image_url": {"url": "x"}}]}]}):
        with pytest.raises(openai.BadRequestError) as error:
            chat(client, **bad)
        assert error.value.status_code == 400
    with pytest.raises(openai.BadRequestError) as long:
        chat(client, max_tokens=1000)
    assert "must be <= 256" in str(long.value)


def test_unknown_fields_are_ignored_and_extensions_accepted(client):
    result = chat(client, max_tokens=3, temperature=0,
                  extra_body={"top_k": 5, "repetition_penalty": 1.2, "ignore_eos": True,
                              "some_future_field": {"x": 1}})
    assert result.usage.completion_tokens == 3
