"""The continuous-batching engine: `submit` requests, iterate their token events, `cancel`.

A device loop in its own thread repeats: apply cancellations, admit waiting requests into free
slots, run one prefill (chunks of one or more prompts within the token budget), launch decoding
for every decoding slot, and send each request its events. A decode call runs one step, or up
to `decode_steps` while no request waits for a slot or a prefill (the host's work per call is
then paid once per several tokens). Its tokens are read in the next iteration; while only
decoding goes on, that iteration first launches the next call on them (still on the device),
so the host's work overlaps the device's (a choice that a call ends by a stop token then has a
few tokens too many computed: they are dropped). When there is nothing to do it sleeps on a
condition variable until `submit` or `cancel` wakes it. A failing step fails the requests in
it; the loop goes on serving the others.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Callable

import numpy as np
from jax import Array, Device
from jax.sharding import Mesh

from gemma_server.config import EngineConfig
from gemma_server.datatypes import FinishEvent, FinishReason, GenerationRequest
from gemma_server.engine import decode_calls, events
from gemma_server.engine.channel import Channel, RequestStream
from gemma_server.engine.decode_calls import InFlight
from gemma_server.engine.executor import Executor
from gemma_server.engine.scheduler import Admitted, Choice, PrefillPlan, Scheduler
from gemma_server.errors import EngineFailure, InvalidRequest, ModelNotFound
from gemma_server.lora import AdapterRegistry, LoraAdapter
from gemma_server.model.config import GemmaConfig
from gemma_server.model.params import Params

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, params: Params, cfg: GemmaConfig, config: EngineConfig,
                 vocab_limit: int | None = None, mesh: Mesh | None = None,
                 device: Device | None = None):
        """`mesh`: serve the model tensor-parallel over these devices; `device`: on this one
        device (a data-parallel replica, engine/pool.py). See Executor."""
        self.config = config
        self.executor = Executor(params, cfg, config, vocab_limit, mesh, device)
        self.scheduler = Scheduler(config)
        self.adapters = AdapterRegistry(config.max_loras)
        self._device = threading.Lock()  # one user of the device state at a time
        self._cond = threading.Condition()
        self._cancelled: set[tuple[str, int | None]] = set()  # (request id, choice or all)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.steps = {"prefill": 0, "decode": 0}
        self.failure: BaseException | None = None
        self._in_flight: InFlight | None = None  # a launched decode step not yet read

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, warm_up: bool = True,
              progress: Callable[[int, int, str], None] | None = None) -> None:
        if warm_up:
            self.executor.warm_up(progress)
        self._thread = threading.Thread(target=self._run, name="gemma-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- the contract -------------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> RequestStream:
        """Queue a request; raises Overloaded / ContextTooLong / InvalidRequest at once."""
        if not self.alive:
            raise EngineFailure("the engine is not running")
        if any(t >= self.executor.cfg.vocab_size for t in request.prompt_ids):
            raise InvalidRequest("the prompt holds token ids outside the model's vocabulary")
        if request.adapter_id is not None and not 1 <= request.adapter_id <= \
                self.config.max_loras:
            raise InvalidRequest(f"adapter id {request.adapter_id} is not a LoRA row")
        channel = Channel(asyncio.get_running_loop())
        seed = request.sampling.seed
        if seed is None:
            seed = secrets.randbits(64)
        with self._cond:
            if request.request_id in self.scheduler.by_id or any(
                    r.request_id == request.request_id for r, _, _ in self.scheduler.waiting):
                raise InvalidRequest(f"request id {request.request_id!r} is already in use")
            self.scheduler.enqueue(request, channel, seed)
            self._cond.notify()
        return RequestStream(request.request_id, request.n, channel, self.cancel)

    def cancel(self, request_id: str, choice: int | None = None) -> None:
        """Stop a request (or only one of its choices, e.g. on a stop string) before the next
        step; the stopped choices end with FinishEvent(reason="cancelled")."""
        with self._cond:
            self._cancelled.add((request_id, choice))
            self._cond.notify()

    # --- LoRA adapters ------------------------------------------------------------------------

    def load_adapter(self, adapter: LoraAdapter) -> int:
        """Make an adapter servable; returns its row (the `adapter_id` requests use)."""
        row = self.adapters.reserve(adapter.name, str(adapter.path))
        try:
            with self._device:
                self.executor.set_adapter(row, adapter)
        except BaseException:
            self.adapters.release(adapter.name)
            raise
        return row

    def unload_adapter(self, name: str) -> None:
        """Free an adapter's row; refused while requests still use it."""
        row = self.adapters.row(name)
        if row is None:
            raise ModelNotFound(f"no LoRA adapter named {name!r} is loaded")
        self.adapters.release(name)  # new requests can no longer resolve the name
        users = self.adapter_users(row)
        if users:
            self.adapters.reserve(name, str(row))
            raise InvalidRequest(f"adapter {name!r} is in use by {users} request(s)")
        with self._device:
            self.executor.set_adapter(row, None)

    def adapter_users(self, row: int) -> int:
        """Requests, waiting or running, that use the adapter in LoRA row `row`."""
        with self._cond:
            users = sum(1 for a in self.scheduler.by_id.values() if a.request.adapter_id == row)
            return users + sum(1 for r, _, _ in self.scheduler.waiting if r.adapter_id == row)

    def stats(self) -> dict[str, int]:
        """Counts for metrics and draining: requests waiting / prefilling, slots decoding /
        free / in all, and XLA compilations since warm-up."""
        with self._cond:
            s = self.scheduler
            return {"waiting": len(s.waiting), "prefilling": len(s.prefilling),
                    "decoding": len(s.decoding), "free_slots": len(s.free_slots),
                    "slots": self.executor.slots, "requests": len(s.by_id) + len(s.waiting),
                    "compilations_after_warm_up": self.executor.compilations_after_warm_up()}

    def abort_all(self, message: str) -> int:
        """End every request, waiting or running, with an error event carrying `message`
        (the last step of a drain that ran out of time); returns how many there were."""
        with self._cond:
            running = list(self.scheduler.by_id.values())
            for admitted in running:
                self._fail(admitted, message)
            waiting = [request for request, _, _ in self.scheduler.waiting]
            for request in waiting:
                self.scheduler.remove(request.request_id, events.end_waiting("error", message))
            self._cond.notify()
        return len(running) + len(waiting)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the device loop ends (stopped or died); False on timeout."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # --- the device loop ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (self._stopping or self._cancelled or self.scheduler.busy or
                               self._in_flight is not None):
                        self._cond.wait()
                    if self._stopping:
                        return
                    unchanged = not self._cancelled
                    self._apply_cancellations()
                    admitted = list(self.scheduler.admit())
                    plan = self.scheduler.plan_prefill()
                    ahead = self._next_call() if unchanged and not admitted and \
                        plan is None else None
                now = time.perf_counter()
                for item in admitted:
                    events.channel(item.sink).admitted_at = now
                with self._device:
                    if ahead is not None:
                        self._decode_ahead(*ahead)
                        continue
                    self._finish_decode()
                    for item in admitted:
                        self._insert(item)
                    if plan is not None:
                        self._prefill(plan)
                    if self.scheduler.decoding:
                        self._launch_decode()
        except BaseException as exc:  # the loop itself broke: fail everyone, stay dead
            log.exception("engine loop died")
            self.failure = exc
            with self._cond:
                for holder in list(self.scheduler.by_id.values()):
                    self._fail(holder, f"engine failure: {exc}")

    def _apply_cancellations(self) -> None:
        for request_id, index in self._cancelled:
            if index is not None and self._cancel_choice(request_id, index):
                continue
            holder = self.scheduler.by_id.get(request_id)
            open_choices = events.open_choices(holder) if holder is not None else []
            admitted = self.scheduler.remove(request_id, events.end_waiting("cancelled"))
            if admitted is not None:
                for i, generated in open_choices:
                    events.send(admitted.sink, FinishEvent(i, "cancelled", admitted.prompt_len,
                                                           generated))
        self._cancelled.clear()

    def _cancel_choice(self, request_id: str, index: int) -> bool:
        """End one decoding choice; False when the whole request should go instead."""
        admitted = self.scheduler.by_id.get(request_id)
        if admitted is None or not admitted.choices:
            return False
        choice = admitted.choices[index]
        if not choice.done:
            self.scheduler.finish_choice(admitted, choice)
            events.send(admitted.sink, FinishEvent(index, "cancelled", admitted.prompt_len,
                                                   choice.generated))
        return True

    def _insert(self, admitted: Admitted) -> None:
        for index, slot in enumerate(admitted.slots):
            # Choice i of a seeded request draws from seed + i: reproducible, and distinct.
            seed = (admitted.seed + index) % 2**64
            self.executor.insert(slot, admitted.request.sampling, seed,
                                 admitted.request.adapter_id or 0,
                                 top_logprobs=bool(admitted.request.logprobs))

    def _prefill(self, plan: PrefillPlan) -> None:
        try:
            drawn, logits = self.executor.prefill(*plan.inputs(self.executor.slots))
        except Exception as exc:
            self._step_failed([c.admitted for c in plan.chunks], exc)
            return
        self.steps["prefill"] += 1
        for r, chunk in enumerate(plan.chunks):
            with self._cond:
                if chunk.admitted.request.request_id not in self.scheduler.by_id:
                    continue  # cancelled meanwhile
                self.scheduler.prefilled(chunk)
                if not chunk.final:
                    continue
                self.scheduler.start_decoding(chunk.admitted)
            self._first_tokens(chunk.admitted, drawn, r, logits)

    def _first_tokens(self, admitted: Admitted, drawn: dict[str, np.ndarray], row: int,
                      logits: Array) -> None:
        self._accept(admitted, admitted.choices[0], drawn, row)
        if admitted.request.n == 1:
            return
        targets = np.full(self.executor.slots, self.executor.slots, np.int32)
        others = admitted.choices[1:]
        targets[:len(others)] = [c.slot for c in others]
        try:
            # The row is picked on the host: an eager device slice would compile per row.
            forked = self.executor.fork(admitted.slots[0], targets,
                                        self.executor.host_row(logits, row))
        except Exception as exc:
            self._step_failed([admitted], exc)
            return
        for j, choice in enumerate(others):
            self._accept(admitted, choice, forked, j)

    def _steps_per_call(self) -> int:
        """Several decode steps per call only while nobody waits: a request waiting for a
        slot or a prefill would otherwise wait for the whole call."""
        s = self.scheduler
        return 1 if s.waiting or s.prefilling else self.config.decode_steps

    def _launch_decode(self) -> None:
        """Launch a call over every decoding slot, its tokens from the host."""
        n = self.executor.slots
        tokens = np.zeros(n, np.int32)
        positions = np.full(n, -1, np.int32)
        live = [(slot, admitted, choice)
                for slot, (admitted, choice) in self.scheduler.decoding.items()]
        for slot, _, choice in live:
            tokens[slot], positions[slot] = choice.last_token, choice.position
        budgets = decode_calls.budgets(n, live, {slot: c.generated for slot, _, c in live},
                                       self._steps_per_call())
        try:
            launch = self.executor.launch_decode(tokens, positions, budgets)
        except Exception as exc:
            self._step_failed(events.requests_of(live), exc)
            return
        self._in_flight = InFlight(live, positions, budgets, launch)

    def _next_call(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Positions and budgets of a call to launch on the in-flight one's last tokens, or
        None (see decode_calls.next_call)."""
        if self._in_flight is None:
            return None
        return decode_calls.next_call(self._in_flight, list(self.scheduler.decoding),
                                      self.executor.slots, self._steps_per_call(),
                                      self.executor.decode_rows)

    def _decode_ahead(self, positions: np.ndarray, budgets: np.ndarray) -> None:
        """Launch the next call on the in-flight one's last tokens, then hand those out."""
        step = self._in_flight
        assert step is not None
        live = [(slot, a, c) for slot, a, c in step.live if positions[slot] >= 0]
        try:
            launch = self.executor.launch_decode(None, positions, budgets)
        except Exception as exc:
            self._finish_decode()
            self._step_failed(events.requests_of(live), exc)
            return
        self._in_flight = InFlight(live, positions, budgets, launch)
        self._hand_out(step)

    def _finish_decode(self) -> None:
        """Read the call in flight, if any, and hand its tokens out."""
        step, self._in_flight = self._in_flight, None
        if step is not None:
            self._hand_out(step)

    def _hand_out(self, step: InFlight) -> None:
        try:
            drawn = step.launch.result()
        except Exception as exc:
            self._in_flight = None  # a later call was launched on this one's failed outputs
            self._step_failed(events.requests_of(step.live), exc)
            return
        self.steps["decode"] += step.launch.count
        for i in range(step.launch.count):
            row = {name: value[i] for name, value in drawn.items()}
            for slot, admitted, choice in step.live:
                if not choice.done and i < step.budgets[slot]:
                    choice.position += 1
                    self._accept(admitted, choice, row, slot)

    def _accept(self, admitted: Admitted, choice: Choice, drawn: dict[str, np.ndarray],
                row: int) -> None:
        """Hand one drawn token to its choice; a failure here fails this request only."""
        try:
            self._accept_token(admitted, choice, drawn, row)
        except Exception as exc:
            log.exception("request %s failed", admitted.request.request_id)
            with self._cond:
                self._fail(admitted, f"request failed: {exc}")

    def _accept_token(self, admitted: Admitted, choice: Choice, drawn: dict[str, np.ndarray],
                      row: int) -> None:
        request = admitted.request
        token = int(drawn["tokens"][row])
        choice.generated += 1
        choice.last_token = token
        reason: FinishReason | None = None
        if token in request.stop_ids and not request.sampling.ignore_eos:
            reason = "stop"
        else:
            events.send(admitted.sink, events.token_event(request, choice.index, token, drawn, row))
            if choice.generated >= request.max_new_tokens:
                reason = "length"
        if reason is not None:
            with self._cond:
                self.scheduler.finish_choice(admitted, choice)
            events.send(admitted.sink, FinishEvent(choice.index, reason, admitted.prompt_len,
                                                   choice.generated))

    def _step_failed(self, requests: list[Admitted], exc: Exception) -> None:
        """Fail the requests of a failed step. Only if the step had already consumed the
        donated cache must every other request fail too: their KV entries are gone."""
        log.exception("engine step failed", exc_info=exc)
        lost = self.executor.state_lost()
        if lost:
            self.executor.reset()
        with self._cond:
            victims = list(self.scheduler.by_id.values()) if lost else requests
            for admitted in victims:
                message = f"engine step failed: {exc}" if admitted in requests else \
                    "engine step failed for another request and the KV cache was lost"
                self._fail(admitted, message)

    def _fail(self, admitted: Admitted, message: str) -> None:
        open_choices = events.open_choices(admitted)
        self.scheduler.remove(admitted.request.request_id, lambda r, s: None)
        for i, generated in open_choices:
            events.send(admitted.sink, FinishEvent(i, "error", admitted.prompt_len, generated,
                                                   error=message))
