"""The host-side scheduler: which requests wait, which slots they hold, what runs next.

No jax here: the scheduler only decides. Each engine iteration asks it for at most one prefill
(several prompt chunks within the token budget) and then one decode step over every decoding
slot, so long prompts never stall running streams for more than one chunk.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import deque
from collections.abc import Callable, Iterator

import numpy as np

from gemma_server.config import EngineConfig
from gemma_server.datatypes import GenerationRequest
from gemma_server.errors import ContextTooLong, InvalidRequest, Overloaded


@dataclasses.dataclass(eq=False)
class Choice:
    """One of a request's n choices, decoding in its own slot."""

    slot: int
    index: int
    position: int = 0  # position of `last_token`, the next token fed to the model
    last_token: int = 0
    generated: int = 0
    done: bool = False


@dataclasses.dataclass(eq=False)
class Admitted:
    """A request that holds slots: prefilling its prompt, then decoding its choices."""

    request: GenerationRequest
    sink: object  # where events go (the engine's channel)
    seed: int
    slots: list[int]
    prefilled: int = 0
    choices: list[Choice] = dataclasses.field(default_factory=list)

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_ids)


@dataclasses.dataclass(frozen=True)
class ChunkPlan:
    admitted: Admitted
    start: int
    length: int

    @property
    def final(self) -> bool:
        return self.start + self.length == self.admitted.prompt_len


@dataclasses.dataclass(frozen=True)
class PrefillPlan:
    rows: int  # compiled row count (>= len(chunks))
    bucket: int  # compiled chunk length
    chunks: tuple[ChunkPlan, ...]

    def inputs(self, slot_count: int) -> tuple[np.ndarray, ...]:
        """The prefill step's host inputs: each row's slot (`slot_count` pads), token ids and
        positions (-1 pads), the index of its last token and whether it ends its prompt."""
        slots = np.full(self.rows, slot_count, np.int32)
        tokens = np.zeros((self.rows, self.bucket), np.int32)
        positions = np.full((self.rows, self.bucket), -1, np.int32)
        last = np.zeros(self.rows, np.int32)
        final = np.zeros(self.rows, np.bool_)
        for r, chunk in enumerate(self.chunks):
            prompt = chunk.admitted.request.prompt_ids
            slots[r] = chunk.admitted.slots[0]
            tokens[r, :chunk.length] = prompt[chunk.start:chunk.start + chunk.length]
            positions[r, :chunk.length] = np.arange(chunk.start, chunk.start + chunk.length)
            last[r] = chunk.length - 1
            final[r] = chunk.final
        return slots, tokens, positions, last, final


class Scheduler:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.waiting: deque[tuple[GenerationRequest, object, int]] = deque()
        self.free_slots: list[int] = list(range(config.max_batch_size))
        self.prefilling: deque[Admitted] = deque()
        self.decoding: dict[int, tuple[Admitted, Choice]] = {}
        self.by_id: dict[str, Admitted] = {}
        self._shapes = sorted(config.prefill_shapes())
        self._buckets = sorted({bucket for _, bucket in self._shapes})

    # --- admission --------------------------------------------------------------------------

    def check(self, request: GenerationRequest) -> None:
        """Refuse, before queuing, what can never run; Overloaded when the queue is full."""
        limit, prompt = self.config.max_total_tokens, len(request.prompt_ids)
        if prompt > self.config.max_input_length:
            raise ContextTooLong(
                f"the prompt has {prompt} tokens; the limit is {self.config.max_input_length}")
        if prompt + request.max_new_tokens > limit:
            raise ContextTooLong(
                f"the prompt ({prompt} tokens) plus max_new_tokens ({request.max_new_tokens}) "
                f"exceeds the {limit}-token limit")
        if request.n > self.config.max_batch_size:
            raise InvalidRequest(f"n must be at most {self.config.max_batch_size}")
        # Requests the next admission will seat (free slots) are not waiting for anything.
        if len(self.waiting) - len(self.free_slots) >= self.config.max_waiting:
            raise Overloaded("the server is busy: too many requests are waiting")

    def enqueue(self, request: GenerationRequest, sink: object, seed: int) -> None:
        self.check(request)
        self.waiting.append((request, sink, seed))

    def admit(self) -> Iterator[Admitted]:
        """Move waiting requests, in order, into free slots while enough are free."""
        while self.waiting and len(self.free_slots) >= self.waiting[0][0].n:
            request, sink, seed = self.waiting.popleft()
            self.free_slots.sort()  # lowest slots first: decode runs on the leading slots only
            slots = [self.free_slots.pop(0) for _ in range(request.n)]
            admitted = Admitted(request, sink, seed, slots)
            self.prefilling.append(admitted)
            self.by_id[request.request_id] = admitted
            yield admitted

    # --- planning ---------------------------------------------------------------------------

    def plan_prefill(self) -> PrefillPlan | None:
        """Up to the largest compiled row count of prompt chunks, within the token budget."""
        if not self.prefilling:
            return None
        max_bucket = self._buckets[-1]
        chunks: list[ChunkPlan] = []
        for admitted in self.prefilling:
            remaining = admitted.prompt_len - admitted.prefilled
            candidate = [*chunks, ChunkPlan(admitted, admitted.prefilled,
                                            min(remaining, max_bucket))]
            if self._shape_for(candidate) is None:
                break
            chunks = candidate
        rows, bucket = self._shape_for(chunks) or (1, self._bucket(chunks[0].length))
        return PrefillPlan(rows, bucket, tuple(chunks))

    def _bucket(self, length: int) -> int:
        return self._buckets[bisect.bisect_left(self._buckets, length)]

    def _shape_for(self, chunks: list[ChunkPlan]) -> tuple[int, int] | None:
        bucket = self._bucket(max(c.length for c in chunks))
        fits = [(r, b) for r, b in self._shapes if b == bucket and r >= len(chunks)]
        return min(fits) if fits else None

    def prefilled(self, chunk: ChunkPlan) -> None:
        chunk.admitted.prefilled += chunk.length
        if chunk.final:
            self.prefilling.remove(chunk.admitted)

    def start_decoding(self, admitted: Admitted) -> None:
        for index, slot in enumerate(admitted.slots):
            choice = Choice(slot=slot, index=index, position=admitted.prompt_len)
            admitted.choices.append(choice)
            self.decoding[slot] = (admitted, choice)

    # --- release ----------------------------------------------------------------------------

    def finish_choice(self, admitted: Admitted, choice: Choice) -> bool:
        """Free a finished choice's slot; True when it was the request's last one."""
        choice.done = True
        self.decoding.pop(choice.slot, None)
        self.free_slots.append(choice.slot)
        if all(c.done for c in admitted.choices):
            self.by_id.pop(admitted.request.request_id, None)
            return True
        return False

    def remove(self, request_id: str,
               on_waiting: Callable[[GenerationRequest, object], None]) -> Admitted | None:
        """Drop a request wherever it is; its slots are free before the next step."""
        for item in list(self.waiting):
            if item[0].request_id == request_id:
                self.waiting.remove(item)
                on_waiting(item[0], item[1])
                return None
        admitted = self.by_id.pop(request_id, None)
        if admitted is None:
            return None
        if admitted in self.prefilling:
            self.prefilling.remove(admitted)
        held = [c.slot for c in admitted.choices if not c.done] if admitted.choices \
            else admitted.slots
        for slot in held:
            self.decoding.pop(slot, None)
            self.free_slots.append(slot)
        for choice in admitted.choices:
            choice.done = True
        return admitted

    @property
    def busy(self) -> bool:
        return bool(self.prefilling or self.decoding or
                    (self.waiting and len(self.free_slots) >= self.waiting[0][0].n))
