"""Engine thread -> asyncio: one channel per request, fed with `call_soon_threadsafe`.

Events, errors and end-of-stream all travel down the same channel; the consumer awaits the
queue, nothing polls. Closing the stream early (a client that went away) cancels the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from gemma_server.datatypes import Event, FinishEvent


class Channel:
    """The engine-side end: thread-safe `send`. `admitted_at` (perf_counter) is set by the
    engine when the request leaves the queue for a slot: its queue time, for metrics."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self.created_at = time.perf_counter()
        self.admitted_at: float | None = None

    def send(self, event: Event) -> None:
        # A closed event loop raises RuntimeError: nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    async def receive(self) -> Event:
        return await self._queue.get()


class RequestStream:
    """The consumer-side end: iterate to get a request's events until every choice finished.

    `cancel()` (or leaving the iteration early) tells the engine to stop the request.
    """

    def __init__(self, request_id: str, n: int, channel: Channel,
                 cancel: Callable[[str], None]):
        self.request_id = request_id
        self._n = n
        self._channel = channel
        self._cancel = cancel
        self._finished = 0

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        try:
            while self._finished < self._n:
                event = await self._channel.receive()
                if isinstance(event, FinishEvent):
                    self._finished += 1
                yield event
        finally:
            if self._finished < self._n:
                self.cancel()

    def cancel(self) -> None:
        self._cancel(self.request_id)

    @property
    def done(self) -> bool:
        return self._finished >= self._n

    @property
    def queue_seconds(self) -> float | None:
        """Seconds from submission to a slot; None while still waiting."""
        admitted = self._channel.admitted_at
        return None if admitted is None else admitted - self._channel.created_at
