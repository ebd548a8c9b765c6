"""OpenAI `/v1/chat/completions` and `/v1/completions` request bodies, field for field.

Types are strict (`"temperature": "0.7"` is refused, NaN/Infinity are refused), ranges are
OpenAI's, unknown fields are ignored. Extensions accepted as vLLM does: `top_k` (0 or -1 =
off, at most 50 here), `repetition_penalty` (> 0), `ignore_eos`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gemma_server.api.schemas.stops import check_stops, stop_tuple

Strict = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class TextPart(BaseModel):
    model_config = Strict
    type: Literal["text"]
    text: str


class OtherPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str


class Message(BaseModel):
    model_config = Strict
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart | OtherPart] | None = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("content must not be an empty array")
            for part in value:
                if not isinstance(part, TextPart):
                    raise ValueError(
                        f"content part type '{part.type}' is not supported: this model reads "
                        "text only")
        return value

    def text(self) -> str:
        """String content, text parts joined with newlines (as vLLM does), null as ''."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content if isinstance(part, TextPart))


class StreamOptions(BaseModel):
    model_config = Strict
    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    type: str


class _Sampling(BaseModel):
    """Fields shared by chat and completions."""

    model_config = Strict
    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: Int64 | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Extensions (vLLM's names).
    top_k: int | None = Field(None, ge=-1, le=50)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    ignore_eos: bool = False

    _stops = field_validator("stop")(check_stops)

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, value: Any) -> Any:
        for key, bias in (value or {}).items():
            if not key.lstrip("-").isdigit() or int(key) < 0:
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias values must be between -100 and 100, got {bias}")
        return value

    @model_validator(mode="after")
    def _stream_options(self) -> _Sampling:
        if self.stream_options is not None and not self.stream:
            raise ValueError("The 'stream_options' parameter is only allowed when 'stream' "
                             "is enabled.")
        return self

    def stop_list(self) -> tuple[str, ...]:
        return stop_tuple(self.stop)


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None

    @model_validator(mode="after")
    def _checks(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        if self.tools:
            raise ValueError("tools are not supported by this model")
        if self.response_format is not None and self.response_format.type != "text":
            raise ValueError(f"response_format type '{self.response_format.type}' is not "
                             "supported; only 'text'")
        return self


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = Field(None, ge=1, le=20)

    @model_validator(mode="after")
    def _checks(self) -> CompletionRequest:
        if self.suffix is not None:
            raise ValueError("suffix is not currently supported")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of is not supported (it must equal n)")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be empty")
        return self

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text, or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]
