"""Workers AI `/ai/run` input for `@hf/google/gemma-7b-it`, both `oneOf` branches.

Bounds are Cloudflare's: temperature 0..5 (default 0.6), top_p 0..2, top_k 1..50,
seed 1..9999999999, penalties 0..2, max_tokens default 256, prompt and content at most 6144
characters. `raw` and `lora` are accepted in both branches, and `raw` also as the strings
"true"/"false" (Cloudflare's own REST example sends a string). `stop` is our extension.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gemma_server.api.schemas.stops import check_stops, stop_tuple

MAX_TEXT = 6144
Strict = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class WorkersAiMessage(BaseModel):
    model_config = Strict
    role: str
    content: str = Field(max_length=MAX_TEXT)


class _Common(BaseModel):
    model_config = Strict
    stream: bool = False
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.6, ge=0, le=5)
    top_p: float | None = Field(None, ge=0, le=2)
    top_k: int | None = Field(None, ge=1, le=50)
    seed: int | None = Field(None, ge=1, le=9_999_999_999)
    repetition_penalty: float | None = Field(None, ge=0, le=2)
    frequency_penalty: float | None = Field(None, ge=0, le=2)
    presence_penalty: float | None = Field(None, ge=0, le=2)
    raw: bool = False
    lora: str | None = None
    stop: str | list[str] | None = None

    @field_validator("raw", mode="before")
    @classmethod
    def _raw_strings(cls, value: Any) -> Any:
        if value in ("true", "false"):
            return value == "true"
        return value

    _stops = field_validator("stop")(check_stops)

    def stop_list(self) -> tuple[str, ...]:
        return stop_tuple(self.stop)


class PromptInput(_Common):
    prompt: str = Field(min_length=1, max_length=MAX_TEXT)


class MessagesInput(_Common):
    messages: list[WorkersAiMessage] = Field(min_length=1)
    functions: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
