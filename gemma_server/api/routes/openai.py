"""OpenAI routes: chat completions, completions and models."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from gemma_server.api.errors import ApiError, openai_body
from gemma_server.api.routes.common import (
    Collected,
    collect,
    parse,
    record_of,
    sampling,
    state_of,
    stream_failure,
    until_disconnected,
    usage_dict,
)
from gemma_server.api.schemas import inline_schema
from gemma_server.api.schemas.openai import ChatCompletionRequest, CompletionRequest, Message
from gemma_server.api.sse import DONE, encode, event_stream
from gemma_server.errors import TemplateError
from gemma_server.service import (
    ChoiceEnd,
    GenerationOutput,
    ModelService,
    TextDelta,
    TextRequest,
    TokenLogprob,
    Usage,
)
from gemma_server.telemetry import RequestRecord
from gemma_server.tokenizer import ChatMessage

router = APIRouter(prefix="/v1", tags=["OpenAI"])


def _body(schema: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"content": {"application/json": {"schema": inline_schema(schema)}}}}


# --- models ------------------------------------------------------------------------------------

@router.get("/models", summary="List the served models")
async def list_models(request: Request) -> dict[str, Any]:
    state = state_of(request)
    names = state.names + state.adapter_names()
    return {"object": "list", "data": [_model_card(request, name) for name in names]}


@router.get("/models/{model:path}", summary="Describe one served model")
async def get_model(model: str, request: Request) -> dict[str, Any]:
    state = state_of(request)
    if model not in state.names and model not in state.adapter_names():
        raise ApiError(404, f"The model `{model}` does not exist.", "model", "model_not_found")
    return _model_card(request, model)


def _model_card(request: Request, name: str) -> dict[str, Any]:
    state = state_of(request)
    base = state.names[0]
    adapter = name not in state.names
    card: dict[str, Any] = {"id": name, "object": "model", "created": state.created,
                            "owned_by": "gemma_server", "parent": base if adapter else None,
                            "root": base}
    if adapter and state.service is not None:
        card["root"] = state.service.engine.adapters.path(name)
    if state.service is not None:
        card["max_model_len"] = state.service.max_total_tokens
    return card


# --- chat --------------------------------------------------------------------------------------

@router.post("/chat/completions", openapi_extra=_body(ChatCompletionRequest),
             summary="Create a chat completion")
async def chat_completions(request: Request) -> Any:
    req = await parse(request, ChatCompletionRequest)
    state = state_of(request)
    service = state.resolve(req.model)
    prompt = _chat_prompt(service, req.messages)
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    output = service.submit(TextRequest(
        prompt, req.max_completion_tokens or req.max_tokens, _sampling(req), req.n,
        req.stop_list(), logprobs, adapter_id=state.adapter(req.model)), record_of(request))
    ident, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
    head = {"id": ident, "created": created, "model": req.model, "system_fingerprint": None}
    if req.stream:
        usage = req.stream_options is not None and req.stream_options.include_usage
        return event_stream(_chat_events(output, head, req.n, usage))
    result = await until_disconnected(request, collect(output, req.n), output.cancel)
    choices = [{
        "index": i,
        "message": {"role": "assistant", "content": result.texts[i], "refusal": None},
        "logprobs": _chat_logprobs(result.logprobs[i]) if logprobs is not None else None,
        "finish_reason": result.finish[i],
    } for i in range(req.n)]
    return JSONResponse({**head, "object": "chat.completion", "choices": choices,
                         "usage": usage_dict(result.usage)})


def _chat_prompt(service: ModelService, messages: list[Message]) -> tuple[int, ...]:
    converted = []
    for i, message in enumerate(messages):
        if message.role in ("tool", "function"):
            raise ApiError(400, f"Invalid 'messages[{i}].role': '{message.role}' messages are "
                                "not supported by this model", f"messages[{i}].role")
        converted.append(ChatMessage(message.role, message.text()))
    try:
        return service.prompt_from_messages(converted)
    except TemplateError as exc:
        raise ApiError(400, str(exc), "messages", "invalid_conversation") from None


def _sampling(req: ChatCompletionRequest | CompletionRequest) -> Any:
    return sampling(1.0 if req.temperature is None else req.temperature, req.top_p, req.top_k,
                    req.repetition_penalty, req.frequency_penalty, req.presence_penalty,
                    req.seed, req.ignore_eos, req.logit_bias)


def _chat_logprobs(tokens: list[TokenLogprob]) -> dict[str, Any]:
    return {"content": [{
        "token": t.token, "logprob": t.logprob, "bytes": list(t.bytes),
        "top_logprobs": [{"token": s, "logprob": lp, "bytes": list(b)} for s, lp, b in t.top],
    } for t in tokens], "refusal": None}


async def _chat_events(output: GenerationOutput, head: dict[str, Any], n: int,
                       include_usage: bool) -> AsyncIterator[str]:
    extra = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None,
              logprobs: Any = None) -> str:
        return encode({**head, "object": "chat.completion.chunk", "choices": [{
            "index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
            **extra})

    try:
        for i in range(n):
            yield chunk(i, {"role": "assistant", "content": ""})
        async for item in output:
            if isinstance(item, TextDelta):
                lp = _chat_logprobs(list(item.logprobs)) if item.logprobs else None
                yield chunk(item.choice, {"content": item.text}, logprobs=lp)
            elif isinstance(item, ChoiceEnd):
                yield chunk(item.choice, {}, finish=item.finish_reason)
            elif include_usage:
                yield encode({**head, "object": "chat.completion.chunk", "choices": [],
                              "usage": usage_dict(item)})
    except Exception as exc:  # after the headers: one error event, and no [DONE]
        yield encode(openai_body(500, stream_failure(exc), None, "engine_failure"))
        return
    yield DONE


# --- completions -------------------------------------------------------------------------------

@router.post("/completions", openapi_extra=_body(CompletionRequest),
             summary="Create a completion")
async def completions(request: Request) -> Any:
    req = await parse(request, CompletionRequest)
    state = state_of(request)
    service = state.resolve(req.model)
    adapter = state.adapter(req.model)
    outputs: list[GenerationOutput] = []
    texts: list[str] = []
    try:
        for prompt in req.prompts():
            text, output = _submit_prompt(service, req, prompt, adapter, record_of(request))
            texts.append(text)
            outputs.append(output)
    except BaseException:
        for output in outputs:  # an invalid later prompt: the earlier ones must not run on
            output.cancel()
        raise
    ident, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())

    head = {"id": ident, "object": "text_completion", "created": created, "model": req.model,
            "system_fingerprint": None}
    if req.stream:
        wants_usage = req.stream_options is not None and req.stream_options.include_usage
        return event_stream(_completion_events(outputs, head, req, texts, wants_usage))

    def cancel_all() -> None:
        for output in outputs:
            output.cancel()

    results: list[Collected] = await until_disconnected(
        request, asyncio.gather(*[collect(o, req.n) for o in outputs]), cancel_all)
    choices = []
    for p, result in enumerate(results):
        for i in range(req.n):
            echo = texts[p] if req.echo else ""
            choices.append({
                "index": p * req.n + i, "text": echo + result.texts[i],
                "logprobs": _completion_logprobs(result.logprobs[i], len(echo))
                if req.logprobs is not None else None,
                "finish_reason": result.finish[i]})
    usage = Usage(sum(r.usage.prompt_tokens for r in results),
                  sum(r.usage.completion_tokens for r in results))
    return JSONResponse({**head, "choices": choices, "usage": usage_dict(usage)})


def _submit_prompt(service: ModelService, req: CompletionRequest, prompt: str | list[int],
                   adapter: int | None,
                   record: RequestRecord | None) -> tuple[str, GenerationOutput]:
    """A completion prompt is raw text (one BOS, no template) or token ids."""
    if isinstance(prompt, str):
        ids, text = service.prompt_from_text(prompt, raw=True), prompt
    else:
        if any(t < 0 or t >= service.tokenizer.vocab_size for t in prompt):
            raise ApiError(400, "Invalid 'prompt': token ids must be in the vocabulary",
                           "prompt")
        ids, text = tuple(prompt), service.tokenizer.decode(list(prompt))
    output = service.submit(TextRequest(ids, req.max_tokens, _sampling(req), req.n,
                                        req.stop_list(), req.logprobs, adapter_id=adapter),
                            record)
    return text, output


def _completion_logprobs(tokens: list[TokenLogprob], offset: int) -> dict[str, Any]:
    offsets, position = [], offset
    for t in tokens:
        offsets.append(position)
        position += len(t.token)
    return {"tokens": [t.token for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{s: lp for s, lp, _ in t.top} for t in tokens],
            "text_offset": offsets}


async def _completion_events(outputs: list[GenerationOutput], head: dict[str, Any],
                             req: CompletionRequest, texts: list[str],
                             include_usage: bool) -> AsyncIterator[str]:
    extra = {"usage": None} if include_usage else {}
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(p: int, output: GenerationOutput) -> None:
        try:
            async for item in output:
                await queue.put((p, item))
        except Exception as exc:
            await queue.put((p, exc))
        await queue.put((p, None))

    tasks = [asyncio.ensure_future(pump(p, o)) for p, o in enumerate(outputs)]
    total = Usage(0, 0)
    try:
        if req.echo:
            for p, text in enumerate(texts):
                for i in range(req.n):
                    yield encode({**head, "choices": [{"index": p * req.n + i, "text": text,
                                  "logprobs": None, "finish_reason": None}], **extra})
        remaining = len(outputs)
        while remaining:
            p, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                yield encode(openai_body(500, stream_failure(item), None, "engine_failure"))
                return
            elif isinstance(item, (TextDelta, ChoiceEnd)):
                finish = item.finish_reason if isinstance(item, ChoiceEnd) else None
                text = item.text if isinstance(item, TextDelta) else ""
                lp = _completion_logprobs(list(item.logprobs), 0) if isinstance(
                    item, TextDelta) and item.logprobs else None
                yield encode({**head, "choices": [{"index": p * req.n + item.choice,
                              "text": text, "logprobs": lp, "finish_reason": finish}],
                              **extra})
            else:
                total = Usage(total.prompt_tokens + item.prompt_tokens,
                              total.completion_tokens + item.completion_tokens)
        if include_usage:
            yield encode({**head, "choices": [], "usage": usage_dict(total)})
        yield DONE
    finally:
        for task in tasks:
            task.cancel()
        for output in outputs:
            output.cancel()
