"""Text in, text out around the engine: templates, tokens, limits, stop strings, usage.

The API layer parses a request into plain values and calls `prompt_*` then `generate`; it
never sees token ids or jax. Limits follow TGI's checks, order and wording (total first, then
input length), so the same prompt fails the same way it does on the servers users know.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Sequence

from gemma_server.datatypes import FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from gemma_server.engine.engine import Engine
from gemma_server.engine.pool import EnginePool
from gemma_server.errors import ContextTooLong, EngineFailure, InvalidRequest
from gemma_server.stop_strings import StopStringMatcher
from gemma_server.telemetry import RequestRecord
from gemma_server.tokenizer import (
    ChatMessage,
    GemmaTokenizer,
    IncrementalDetokenizer,
    render_chat_segments,
)


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[tuple[str, float, tuple[int, ...]], ...] = ()


@dataclasses.dataclass(frozen=True)
class TextDelta:
    choice: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclasses.dataclass(frozen=True)
class ChoiceEnd:
    choice: int
    finish_reason: str  # "stop" or "length"
    completion_tokens: int


@dataclasses.dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


Output = TextDelta | ChoiceEnd | Usage


@dataclasses.dataclass(frozen=True)
class TextRequest:
    """A generation request in text terms, as the API layer builds it."""

    prompt_ids: tuple[int, ...]
    max_tokens: int | None  # None: the room left in max_total_tokens
    sampling: SamplingParams = SamplingParams()
    n: int = 1
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    adapter_id: int | None = None  # LoRA row; None = the base model
    request_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)


class ModelService:
    def __init__(self, name: str, tokenizer: GemmaTokenizer, engine: Engine | EnginePool,
                 stop_ids: frozenset[int]):
        self.name = name
        self.tokenizer = tokenizer
        self.engine = engine
        self.stop_ids = stop_ids
        self.max_total_tokens = engine.config.max_total_tokens
        self.max_input_length = engine.config.max_input_length

    # --- prompts ----------------------------------------------------------------------------

    def prompt_from_messages(self, messages: Sequence[ChatMessage]) -> tuple[int, ...]:
        """The chat template applied; message content is encoded as plain text."""
        return tuple(self.tokenizer.encode_segments(render_chat_segments(messages)))

    def prompt_from_text(self, text: str, raw: bool) -> tuple[int, ...]:
        """`raw`: as written (special-token strings allowed, one BOS); else one user turn."""
        if raw:
            return tuple(self.tokenizer.encode(text))
        return self.prompt_from_messages([ChatMessage("user", text)])

    # --- limits -----------------------------------------------------------------------------

    def max_new_tokens(self, prompt_len: int, max_tokens: int | None) -> int:
        """TGI's checks in TGI's order; an omitted max_tokens takes the room left."""
        total = self.max_total_tokens
        if max_tokens is None:
            max_tokens = total - prompt_len
            if max_tokens < 1:
                raise ContextTooLong(
                    f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= "
                    f"{total}. Given: {prompt_len} `inputs` tokens and 1 `max_new_tokens`")
        if prompt_len + max_tokens > total:
            raise ContextTooLong(
                f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= {total}. "
                f"Given: {prompt_len} `inputs` tokens and {max_tokens} `max_new_tokens`")
        if prompt_len > self.max_input_length:
            raise ContextTooLong(
                f"Input validation error: `inputs` must have less than {self.max_input_length} "
                f"tokens. Given: {prompt_len}")
        return max_tokens

    # --- generation -------------------------------------------------------------------------

    def submit(self, request: TextRequest,
               record: RequestRecord | None = None) -> GenerationOutput:
        """Check limits and queue the request; errors raise here, before any output.
        `record` (the HTTP request's telemetry) hears of the prompt, tokens and the end."""
        max_new = self.max_new_tokens(len(request.prompt_ids), request.max_tokens)
        try:
            generation = GenerationRequest(
                request_id=request.request_id, prompt_ids=request.prompt_ids,
                max_new_tokens=max_new, stop_ids=self.stop_ids, sampling=request.sampling,
                n=request.n, logprobs=request.logprobs, adapter_id=request.adapter_id,
            )
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        stream = self.engine.submit(generation)
        if record is not None:
            adapter = None if request.adapter_id is None else \
                self.engine.adapters.name_of(request.adapter_id)
            record.generation_started(self.name, adapter, len(request.prompt_ids))
        return GenerationOutput(self, request, stream, record)


class GenerationOutput:
    """Iterate to get TextDelta / ChoiceEnd per choice, then one Usage; `cancel()` aborts."""

    def __init__(self, service: ModelService, request: TextRequest, stream: object,
                 record: RequestRecord | None = None):
        from gemma_server.engine.channel import RequestStream

        assert isinstance(stream, RequestStream)
        self._service, self._request, self._stream = service, request, stream
        self._record = record
        self.prompt_tokens = len(request.prompt_ids)

    def cancel(self) -> None:
        self._stream.cancel()

    def __aiter__(self) -> AsyncIterator[Output]:
        return self._outputs()

    async def _outputs(self) -> AsyncIterator[Output]:
        tokenizer, n = self._service.tokenizer, self._request.n
        choices = [_ChoiceText(tokenizer, self._request.stop) for _ in range(n)]
        completion = 0
        record, queued = self._record, False
        try:
            async for event in self._stream:
                if record is not None and not queued and self._stream.queue_seconds is not None:
                    record.admitted(self._stream.queue_seconds)
                    queued = True
                state = choices[event.choice]
                if state.ended:
                    continue
                if isinstance(event, TokenEvent):
                    if record is not None:
                        record.token()
                    delta = state.add(event)
                    if state.matcher.stopped:
                        self._service.engine.cancel(self._request.request_id, event.choice)
                        state.ended = True
                        completion += state.tokens
                        if delta is not None:
                            yield delta
                        if record is not None:
                            record.choice_finished("stop")
                        yield ChoiceEnd(event.choice, "stop", state.tokens)
                    elif delta is not None:
                        yield delta
                    continue
                if event.reason == "error" and record is not None:
                    record.choice_finished("error")
                    record.failed("engine_failure")
                for out in state.finish(event):
                    if isinstance(out, ChoiceEnd) and record is not None:
                        record.choice_finished(out.finish_reason)
                    yield out
                completion += event.completion_tokens
        finally:
            if not self._stream.done:
                self._stream.cancel()
            if record is not None:  # left early (the client went away): the rest cancelled
                for state in choices:
                    if not state.ended:
                        state.ended = True
                        record.choice_finished("cancelled")
        yield Usage(self.prompt_tokens, completion)


class _ChoiceText:
    """One choice's token ids -> released text, with stop strings and logprobs."""

    def __init__(self, tokenizer: GemmaTokenizer, stops: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.matcher = StopStringMatcher(stops)
        self.pending_logprobs: list[TokenLogprob] = []
        self.tokens = 0
        self.ended = False

    def add(self, event: TokenEvent) -> TextDelta | None:
        self.tokens += 1
        if event.logprob is not None:
            self.pending_logprobs.append(self._logprob(event))
        text = self.matcher.feed(self.detokenizer.add(event.token_id))
        return self._delta(event.choice, text)

    def finish(self, event: FinishEvent) -> list[Output]:
        self.ended = True
        if event.reason == "error":
            raise EngineFailure(event.error or "generation failed")
        tail = self.matcher.feed(self.detokenizer.flush())
        tail += self.matcher.flush()
        out: list[Output] = []
        delta = self._delta(event.choice, tail, final=True)
        if delta is not None:
            out.append(delta)
        reason = "stop" if self.matcher.stopped or event.reason == "stop" else "length"
        if event.reason == "cancelled" and not self.matcher.stopped:
            reason = "cancelled"
        out.append(ChoiceEnd(event.choice, reason, event.completion_tokens))
        return out

    def _delta(self, choice: int, text: str, final: bool = False) -> TextDelta | None:
        if not text and not (final and self.pending_logprobs and not self.matcher.stopped):
            return None
        logprobs = () if self.matcher.stopped and not text else tuple(self.pending_logprobs)
        self.pending_logprobs = []
        return TextDelta(choice, text, logprobs)

    def _logprob(self, event: TokenEvent) -> TokenLogprob:
        def describe(token_id: int) -> tuple[str, tuple[int, ...]]:
            raw = self.tokenizer.token_bytes(token_id)
            return raw.decode("utf-8", errors="replace"), tuple(raw)

        token, raw = describe(event.token_id)
        top = tuple((*describe(t), lp) for t, lp in (event.top_logprobs or ()))
        return TokenLogprob(token, float(event.logprob or 0.0), raw,
                            tuple((text, lp, b) for text, b, lp in top))
