"""Runtime LoRA loading, in vLLM's shape: `POST /v1/load_lora_adapter` and
`POST /v1/unload_lora_adapter` with `{"lora_name": ..., "lora_path": ...}`.

Enabled by `--allow-runtime-lora`, which requires API keys, so these routes are always
authenticated. Adapters go into free rows of the fixed `--max-loras` capacity: no recompilation.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict

from gemma_server.api.errors import ApiError
from gemma_server.api.routes.common import parse, state_of
from gemma_server.errors import ConfigurationError, InvalidRequest, ModelNotFound
from gemma_server.lora import load_adapter

router = APIRouter(prefix="/v1", tags=["LoRA"])


class LoadLora(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    lora_name: str
    lora_path: str


class UnloadLora(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    lora_name: str


def _enabled(request: Request) -> None:
    state = state_of(request)
    if not state.allow_runtime_lora:
        raise ApiError(404, "runtime LoRA loading is disabled (start with "
                            "--allow-runtime-lora)", None, "not_found")
    if not state.ready:
        raise ApiError(503, "the model is not ready yet", None, "model_not_ready")


@router.post("/load_lora_adapter", response_class=PlainTextResponse,
             summary="Load a PEFT LoRA adapter at run time")
async def load_lora(request: Request) -> str:
    _enabled(request)
    body = await parse(request, LoadLora)
    state = state_of(request)
    assert state.service is not None
    if body.lora_name in state.names:
        raise ApiError(400, f"{body.lora_name!r} is the base model's name", "lora_name")
    engine = state.service.engine
    try:
        adapter = await asyncio.to_thread(load_adapter, body.lora_name, body.lora_path,
                                          engine.executor.cfg, state.max_lora_rank)
        await asyncio.to_thread(engine.load_adapter, adapter)
    except (ConfigurationError, InvalidRequest) as exc:
        raise ApiError(400, str(exc), "lora_path", "invalid_adapter") from None
    return f"Success: LoRA adapter '{body.lora_name}' added successfully."


@router.post("/unload_lora_adapter", response_class=PlainTextResponse,
             summary="Unload a LoRA adapter")
async def unload_lora(request: Request) -> str:
    _enabled(request)
    body = await parse(request, UnloadLora)
    state = state_of(request)
    assert state.service is not None
    try:
        await asyncio.to_thread(state.service.engine.unload_adapter, body.lora_name)
    except ModelNotFound as exc:
        raise ApiError(404, str(exc), "lora_name", "model_not_found") from None
    except InvalidRequest as exc:
        raise ApiError(400, str(exc), "lora_name", "adapter_in_use") from None
    return f"Success: LoRA adapter '{body.lora_name}' removed successfully."
