"""Workers AI routes: `POST /ai/run/{model}` and the REST form under /client/v4/accounts/."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gemma_server.api.body import read_json_object
from gemma_server.api.errors import ApiError
from gemma_server.api.routes.common import (
    collect,
    record_of,
    sampling,
    state_of,
    stream_failure,
    until_disconnected,
    usage_dict,
    validate,
)
from gemma_server.api.schemas import inline_schema
from gemma_server.api.schemas.workers_ai import MessagesInput, PromptInput
from gemma_server.api.sse import DONE, encode, event_stream
from gemma_server.service import ChoiceEnd, GenerationOutput, ModelService, TextDelta, TextRequest
from gemma_server.tokenizer import ChatMessage

router = APIRouter(tags=["Workers AI"])
_BODY = {"requestBody": {"content": {"application/json": {"schema": {"oneOf": [
    inline_schema(PromptInput), inline_schema(MessagesInput)]}}}}}


@router.post("/ai/run/{model:path}", openapi_extra=_BODY,
             summary="Run a model (Workers AI binding shape)")
async def run_bare(model: str, request: Request) -> Any:
    return await _run(model, request, envelope=False)


@router.post("/client/v4/accounts/{account_id}/ai/run/{model:path}", openapi_extra=_BODY,
             summary="Run a model (Workers AI REST shape)")
async def run_rest(account_id: str, model: str, request: Request) -> Any:
    return await _run(model, request, envelope=True)


def _parse(body: dict[str, Any]) -> PromptInput | MessagesInput:
    has_prompt, has_messages = "prompt" in body, "messages" in body
    if has_prompt and has_messages:
        raise ApiError(400, "Error: oneOf at '/' not met, 2 matches: send either 'prompt' or "
                            "'messages', not both")
    if not has_prompt and not has_messages:
        raise ApiError(400, "Error: oneOf at '/' not met, 0 matches: required properties at "
                            "'/' are 'prompt' or 'messages'")
    if has_prompt:
        return validate(PromptInput, body)
    return validate(MessagesInput, body)


def _prompt_ids(service: ModelService, req: PromptInput | MessagesInput) -> tuple[int, ...]:
    if isinstance(req, PromptInput):
        return service.prompt_from_text(req.prompt, req.raw)
    if req.functions or req.tools:
        raise ApiError(400, "functions and tools are not supported by this model")
    if req.raw:  # no template: the contents, concatenated as written
        return service.prompt_from_text("".join(m.content for m in req.messages), raw=True)
    return service.prompt_from_messages([ChatMessage(m.role, m.content) for m in req.messages])


async def _run(model: str, request: Request, envelope: bool) -> Any:
    state = state_of(request)
    req = _parse(await read_json_object(request, state.max_body_bytes))
    service = state.resolve(model, workers_ai=True)
    adapter = state.adapter(req.lora, workers_ai=True)
    params = sampling(req.temperature, req.top_p, req.top_k, req.repetition_penalty,
                      req.frequency_penalty, req.presence_penalty, req.seed)
    output = service.submit(TextRequest(_prompt_ids(service, req), req.max_tokens, params,
                                        stop=req.stop_list(), adapter_id=adapter),
                            record_of(request))
    if req.stream:
        return event_stream(_events(output))
    result = await until_disconnected(request, collect(output, 1), output.cancel)
    body: dict[str, Any] = {"response": result.texts[0], "usage": usage_dict(result.usage)}
    if envelope:
        return JSONResponse({"result": body, "success": True, "errors": [], "messages": []})
    return JSONResponse(body)


async def _events(output: GenerationOutput) -> AsyncIterator[str]:
    try:
        async for item in output:
            if isinstance(item, TextDelta) and item.text:
                yield encode({"response": item.text})
            elif not isinstance(item, (TextDelta, ChoiceEnd)):
                yield encode({"response": "", "usage": usage_dict(item)})
    except Exception as exc:  # after the headers: an error event, and no [DONE]
        yield encode({"response": "", "error": {"code": 3007, "message": stream_failure(exc)}})
        return
    yield DONE
