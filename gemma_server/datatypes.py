"""The types that cross layer boundaries: a validated generation request and its events.

A request is validated once, at the edge, into a frozen `GenerationRequest`; it is the only
type the engine accepts. Validation here is of engine-level facts (ranges the sampler relies
on); API-specific wording and limits are the API layer's job.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

FinishReason = Literal["stop", "length", "cancelled", "error"]

MAX_TOP_K = 50  # Workers AI's bound; the sampler computes this many candidates per row
MAX_TOP_LOGPROBS = 20  # OpenAI's bound
MAX_SEED = 2**64 - 1
MAX_LOGIT_BIAS = 300


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to choose each token.

    temperature 0 is greedy. top_k 0 is off. top_p >= 1 is off (Workers AI allows up to 2).
    repetition_penalty follows Hugging Face (divide positive, multiply negative logits of every
    token seen in the prompt or output); 1 is off, and 0 — allowed by the Workers AI schema but
    meaningless as a divisor — is also treated as off. frequency/presence penalties are OpenAI's
    additive ones over generated tokens. logit_bias adds to raw logits (token id -> bias).
    seed makes a request reproducible whatever else is in the batch.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "repetition_penalty", "frequency_penalty",
                     "presence_penalty"):
            _check(math.isfinite(getattr(self, name)), f"{name} must be a finite number")
        _check(self.temperature >= 0, "temperature must be >= 0")
        _check(0 <= self.top_k <= MAX_TOP_K, f"top_k must be between 0 (off) and {MAX_TOP_K}")
        _check(self.top_p > 0, "top_p must be > 0")
        _check(self.repetition_penalty >= 0, "repetition_penalty must be >= 0")
        _check(len(self.logit_bias) <= MAX_LOGIT_BIAS,
               f"logit_bias may hold at most {MAX_LOGIT_BIAS} entries")
        for token, bias in self.logit_bias:
            _check(token >= 0 and math.isfinite(bias), "logit_bias needs ids >= 0, finite bias")
        _check(self.seed is None or 0 <= self.seed <= MAX_SEED, "seed must fit in 64 bits")

    @property
    def effective_repetition_penalty(self) -> float:
        return 1.0 if self.repetition_penalty == 0 else self.repetition_penalty


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    stop_ids: frozenset[int] = frozenset()
    sampling: SamplingParams = SamplingParams()
    n: int = 1
    logprobs: int | None = None  # None: none; 0: chosen token only; N: also the top N
    adapter_id: int | None = None

    def __post_init__(self) -> None:
        _check(len(self.prompt_ids) > 0, "the prompt must contain at least one token")
        _check(all(t >= 0 for t in self.prompt_ids), "token ids must be >= 0")
        _check(self.max_new_tokens >= 1, "max_new_tokens must be >= 1")
        _check(self.n >= 1, "n must be >= 1")
        _check(self.logprobs is None or 0 <= self.logprobs <= MAX_TOP_LOGPROBS,
               f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}")


@dataclasses.dataclass(frozen=True)
class TokenEvent:
    """One generated token of choice `choice`; logprob fields only when requested."""

    choice: int
    token_id: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] | None = None


@dataclasses.dataclass(frozen=True)
class FinishEvent:
    """The end of choice `choice`. completion_tokens counts a stop token, as TGI does."""

    choice: int
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


Event = TokenEvent | FinishEvent
