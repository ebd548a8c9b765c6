"""What the engine sends each request: token events with their logprobs, finish events, and
which of a request's choices are still open (the engine loop's bookkeeping helpers)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gemma_server.datatypes import FinishEvent, FinishReason, GenerationRequest, TokenEvent
from gemma_server.engine.channel import Channel
from gemma_server.engine.scheduler import Admitted, Choice


def requests_of(live: list[tuple[int, Admitted, Choice]]) -> list[Admitted]:
    """The distinct requests of a step's rows."""
    return list({id(a): a for _, a, _ in live}.values())


def open_choices(admitted: Admitted) -> list[tuple[int, int]]:
    """(index, tokens generated) of the choices that have not ended yet."""
    if not admitted.choices:
        return [(i, 0) for i in range(admitted.request.n)]
    return [(c.index, c.generated) for c in admitted.choices if not c.done]


def token_event(request: GenerationRequest, choice: int, token: int,
                 drawn: dict[str, np.ndarray], row: int) -> TokenEvent:
    if request.logprobs is None:
        return TokenEvent(choice, token)
    top = tuple(
        (int(i), float(lp)) for i, lp in
        zip(drawn["top_ids"][row][:request.logprobs], drawn["top_logprobs"][row][:request.logprobs],
            strict=True)
    )
    return TokenEvent(choice, token, float(drawn["logprob"][row]), top)


def channel(sink: object) -> Channel:
    assert isinstance(sink, Channel)
    return sink


def send(sink: object, event: TokenEvent | FinishEvent) -> None:
    channel(sink).send(event)


def end_waiting(reason: FinishReason, error: str | None = None
                ) -> Callable[[GenerationRequest, object], None]:
    """A `Scheduler.remove` callback for a request still waiting for a slot: every choice
    ends with `reason` (and `error`) before any token."""
    def end(request: GenerationRequest, sink: object) -> None:
        for i in range(request.n):
            send(sink, FinishEvent(i, reason, len(request.prompt_ids), 0, error=error))

    return end
