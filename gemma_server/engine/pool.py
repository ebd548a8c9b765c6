"""Data parallelism in one process: N engine replicas, one per device, behind one API.

For a machine with several accelerators and a model that fits on one: each replica holds its
own copy of the weights and its own KV slots and runs its own device loop; a request goes to
the replica with the fewest requests (waiting or running), so the replicas fill evenly. The
pool answers the engine's contract (submit, cancel, adapters, stats, lifecycle), so the service
and the API do not know whether one engine or several serve them. LoRA adapters are loaded
into every replica, in the same order, so an adapter has the same row everywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from jax import Device

from gemma_server.config import EngineConfig
from gemma_server.datatypes import GenerationRequest
from gemma_server.engine.channel import RequestStream
from gemma_server.engine.engine import Engine
from gemma_server.errors import ConfigurationError, InvalidRequest
from gemma_server.lora import AdapterRegistry, LoraAdapter
from gemma_server.model.config import GemmaConfig
from gemma_server.model.params import Params


class EnginePool:
    def __init__(self, params: Params, cfg: GemmaConfig, config: EngineConfig,
                 devices: Sequence[Device], vocab_limit: int | None = None):
        if len(devices) < 2:
            raise ConfigurationError("a data-parallel pool needs at least 2 devices")
        self.config = config
        self.engines = [Engine(params, cfg, config, vocab_limit, device=d) for d in devices]
        self.executor = self.engines[0].executor  # the model's config, shapes, compile stats

    @property
    def adapters(self) -> AdapterRegistry:
        return self.engines[0].adapters  # the same names and rows in every replica

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, warm_up: bool = True,
              progress: Callable[[int, int, str], None] | None = None) -> None:
        """Warm every replica (one after the other: compilation uses every core anyway)."""
        count = len(self.engines)
        for i, engine in enumerate(self.engines):
            def told(done: int, total: int, shape: str, i: int = i) -> None:
                if progress:
                    progress(i * total + done, count * total, f"replica {i}: {shape}")

            engine.start(warm_up, told)
        for engine in self.engines:  # the later replicas' warm-ups were not "after warm-up"
            engine.executor.mark_serving()

    def stop(self) -> None:
        for engine in self.engines:
            engine.stop()

    @property
    def alive(self) -> bool:
        return all(engine.alive for engine in self.engines)

    @property
    def failure(self) -> BaseException | None:
        return next((e.failure for e in self.engines if e.failure is not None), None)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until any replica's loop ends (stopped or died); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while all(engine.alive for engine in self.engines):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self.engines[0].wait(0.2)
        return True

    # --- the contract ------------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> RequestStream:
        """To the replica with the fewest requests (the first of equals)."""
        engine = min(self.engines, key=lambda e: e.stats()["requests"])
        return engine.submit(request)

    def cancel(self, request_id: str, choice: int | None = None) -> None:
        # Only the replica holding the request acts on it; the others find nothing to do.
        # (A stream's own cancel goes straight to its replica.)
        for engine in self.engines:
            engine.cancel(request_id, choice)

    def load_adapter(self, adapter: LoraAdapter) -> int:
        rows = [engine.load_adapter(adapter) for engine in self.engines]
        assert len(set(rows)) == 1, "replicas disagree on adapter rows"
        return rows[0]

    def unload_adapter(self, name: str) -> None:
        """Refused, in no replica, while any replica's requests use the adapter."""
        row = self.adapters.row(name)
        if row is not None:
            users = sum(engine.adapter_users(row) for engine in self.engines)
            if users:
                raise InvalidRequest(f"adapter {name!r} is in use by {users} request(s)")
        for engine in self.engines:
            engine.unload_adapter(name)

    def stats(self) -> dict[str, int]:
        """The replicas' counts, summed (compilations are counted per process: once)."""
        total: dict[str, int] = {}
        for engine in self.engines:
            for key, value in engine.stats().items():
                total[key] = total.get(key, 0) + value
        total["compilations_after_warm_up"] = self.engines[0].stats()[
            "compilations_after_warm_up"]
        return total

    def abort_all(self, message: str) -> int:
        return sum(engine.abort_all(message) for engine in self.engines)
