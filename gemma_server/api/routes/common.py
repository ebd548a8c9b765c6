"""Helpers shared by the route modules: parsing, sampling mapping, collection, cancellation."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from gemma_server.api.body import read_json_object
from gemma_server.api.errors import ApiError
from gemma_server.api.schemas import validation_error
from gemma_server.api.state import ServerState
from gemma_server.datatypes import SamplingParams
from gemma_server.errors import EngineFailure
from gemma_server.service import ChoiceEnd, GenerationOutput, TextDelta, TokenLogprob, Usage
from gemma_server.telemetry import RequestRecord

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def record_of(request: Request) -> RequestRecord | None:
    """This request's telemetry record (made by the RequestObserver middleware)."""
    return getattr(request.state, "record", None)


def state_of(request: Request) -> ServerState:
    state = request.app.state.server
    assert isinstance(state, ServerState)
    return state


async def parse(request: Request, schema: type[M]) -> M:
    body = await read_json_object(request, state_of(request).max_body_bytes)
    return validate(schema, body)


def validate(schema: type[M], body: dict[str, Any]) -> M:
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc, schema.model_fields) from None


def sampling(temperature: float, top_p: float | None, top_k: int | None,
             repetition_penalty: float | None, frequency_penalty: float | None,
             presence_penalty: float | None, seed: int | None, ignore_eos: bool = False,
             logit_bias: dict[str, float] | None = None) -> SamplingParams:
    """API values to engine values: None means off; top_p 0 means greedy."""
    if top_p == 0:  # nothing but the most likely token: greedy
        temperature, top_p = 0.0, None
    try:
        return SamplingParams(
            temperature=temperature,
            top_k=max(top_k or 0, 0),
            top_p=1.0 if top_p is None else top_p,
            repetition_penalty=1.0 if repetition_penalty is None else repetition_penalty,
            frequency_penalty=frequency_penalty or 0.0,
            presence_penalty=presence_penalty or 0.0,
            logit_bias=tuple((int(k), float(v)) for k, v in (logit_bias or {}).items()),
            seed=None if seed is None else seed % 2**64,
            ignore_eos=ignore_eos,
        )
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


@dataclasses.dataclass
class Collected:
    texts: list[str]
    finish: list[str]
    logprobs: list[list[TokenLogprob]]
    usage: Usage


async def collect(output: GenerationOutput, n: int) -> Collected:
    texts, finish = [""] * n, ["length"] * n
    logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]
    usage = Usage(output.prompt_tokens, 0)
    async for item in output:
        if isinstance(item, TextDelta):
            texts[item.choice] += item.text
            logprobs[item.choice].extend(item.logprobs)
        elif isinstance(item, ChoiceEnd):
            finish[item.choice] = item.finish_reason
        else:
            usage = item
    return Collected(texts, finish, logprobs, usage)


async def until_disconnected(request: Request, work: Awaitable[T],
                             on_disconnect: Callable[[], None]) -> T:
    """Run `work`, but cancel it (and the engine request) if the client goes away."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        on_disconnect()
        task.cancel()
        raise ApiError(499, "client disconnected", None, "client_disconnected", 3008)
    finally:
        watcher.cancel()


def stream_failure(exc: BaseException) -> str:
    if isinstance(exc, EngineFailure):
        return str(exc)
    return "internal error while generating"


def usage_dict(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}
