"""`gemma-server serve`: settings -> HTTP server listening at once -> model loaded behind it.

The server listens before the weights are loaded, so `/health` answers 503 while loading and
warming and 200 once ready; a load failure, or the engine loop dying later, stops the server
with exit status 1 (a supervisor restarts it, rather than a process that hangs). SIGTERM
drains (`DrainingServer`). Start-up is timed from `serve()`: weights, then warm-up (compiles,
or loads from the persistent compilation cache), each logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import uvicorn
from tqdm import tqdm

from gemma_server.api import ServerState, create_app
from gemma_server.demo import DEMO_NAME, demo_checkpoint_dir
from gemma_server.errors import ConfigurationError
from gemma_server.logs import configure_logging
from gemma_server.lora import LoraAdapter, load_adapter
from gemma_server.model.checkpoint import resolve_checkpoint_dir, resolve_dtype
from gemma_server.model.hf_config import load_hf_config
from gemma_server.model.memory_plan import check_fits, plan_memory
from gemma_server.model.memory_plan import describe as describe_plan
from gemma_server.settings import ServerSettings

log = logging.getLogger("gemma_server")


def served_names(settings: ServerSettings) -> list[str]:
    if settings.served_model_name:
        return list(dict.fromkeys(settings.served_model_name))
    if settings.checkpoint is None:
        return [DEMO_NAME]
    return [Path(settings.checkpoint.rstrip("/")).name]


def preflight(settings: ServerSettings) -> list[LoraAdapter]:
    """Fail before listening on what can be checked without the weights: dtype, paths,
    config.json, limits, the memory plan against the devices (tensor parallel included),
    and every LoRA adapter (returned, loaded on the host)."""
    from gemma_server.model import sharding

    resolve_dtype(settings.dtype)
    path = demo_checkpoint_dir() if settings.checkpoint is None else \
        resolve_checkpoint_dir(settings.checkpoint)
    cfg = load_hf_config(path)
    if settings.max_total_tokens > cfg.max_position_embeddings:
        raise ConfigurationError(
            f"max_total_tokens ({settings.max_total_tokens}) exceeds the model's "
            f"max_position_embeddings ({cfg.max_position_embeddings})")
    plan = plan_memory(cfg, settings.dtype, settings.quantize, settings.tensor_parallel,
                       settings.max_batch_size, settings.max_total_tokens)
    # refuses more devices than there are, before anything is loaded
    sharding.take_devices(settings.tensor_parallel, "tensor_parallel")
    sharding.take_devices(settings.data_parallel, "data_parallel")
    log.info("%s", describe_plan(plan))
    device_bytes = sharding.device_memory_bytes()
    if device_bytes is not None:
        check_fits(plan, device_bytes, settings.memory_utilization)
    adapters = [load_adapter(name, source, cfg, settings.max_lora_rank)
                for name, source in settings.lora_sources()]
    settings.engine_config(settings.lora_capacity(len(adapters)))
    return adapters


@dataclasses.dataclass
class Startup:
    """Seconds from `serve()` to ready, split the way operators ask about it."""

    began: float = dataclasses.field(default_factory=time.perf_counter)
    load_seconds: float = 0.0
    compile_seconds: float = 0.0
    compiled: int = 0
    cache_hits: int = 0


def load_into(state: ServerState, settings: ServerSettings, adapters: list[LoraAdapter],
              startup: Startup | None = None,
              on_exit: list[Callable[[], None]] | None = None) -> None:
    """Load weights, start and warm the engine, load the adapters, then mark ready.
    On process 0 of a multi-host slice, first wait for the other processes (`follow`) and
    announce every step to them; `on_exit` receives what must run at shutdown."""
    import jax

    from gemma_server.engine.engine import Engine
    from gemma_server.engine.pool import EnginePool
    from gemma_server.kernels.library import describe as describe_kernels
    from gemma_server.loading import load_model
    from gemma_server.model import sharding
    from gemma_server.service import ModelService

    startup = startup or Startup()
    began = time.perf_counter()
    mesh = sharding.make_mesh(settings.tensor_parallel) if settings.tensor_parallel > 1 \
        else None
    # Split over a mesh, the model is loaded into host memory first: one accelerator alone
    # may not hold it (the reason to split it), and each device then receives its slices.
    replicas = settings.data_parallel
    host = jax.local_devices(backend="cpu")[0]
    placement = jax.default_device(host) if mesh is not None or replicas > 1 \
        else contextlib.nullcontext()
    with placement:
        model = load_model(settings.checkpoint, settings.dtype, quantize=settings.quantize)
    startup.load_seconds = time.perf_counter() - began
    log.info("weights loaded in %.1f s", startup.load_seconds)
    state.status = "warming"
    capacity = settings.lora_capacity(len(adapters))
    engine: Engine | EnginePool
    if replicas > 1:
        engine = EnginePool(model.checkpoint.params, model.checkpoint.config,
                            settings.engine_config(capacity),
                            sharding.take_devices(replicas, "data_parallel"),
                            vocab_limit=model.tokenizer.vocab_size)
    else:
        engine = Engine(model.checkpoint.params, model.checkpoint.config,
                        settings.engine_config(capacity), vocab_limit=model.tokenizer.vocab_size,
                        mesh=mesh)
    name, tokenizer, stop_ids = state.names[0], model.tokenizer, model.stop_ids
    del model  # with a mesh, the host copy of the weights goes now
    executors = [e.executor for e in engine.engines] if isinstance(engine, EnginePool) \
        else [engine.executor]
    weights, kv_cache = engine.executor.memory_bytes()
    log.info("memory held: weights %.2f GB + KV cache %.2f GB (%d slots x %d tokens)%s",
             weights / 1e9, kv_cache / 1e9, engine.executor.slots, settings.max_total_tokens,
             f" over {settings.tensor_parallel} devices" if mesh is not None else
             f" in each of {replicas} replicas (one per device)" if replicas > 1 else "")
    cache = engine.config.compilation_cache_dir
    log.info("compiling every step shape (compilation cache: %s)", cache or "off")
    with _WarmUpBar() as bar:
        engine.start(progress=bar.update)
    startup.compile_seconds = sum(ex.compile_seconds for ex in executors)
    startup.compiled = sum(ex.compiled_at_warm_up for ex in executors)
    startup.cache_hits = sum(ex.cache_hits_at_warm_up for ex in executors)
    log.info("warm-up took %.1f s: %d executables compiled, %d loaded from the compilation "
             "cache; decode kernels: %s", startup.compile_seconds, startup.compiled,
             startup.cache_hits,
             describe_kernels() if mesh is None else "XLA, tensor parallel")
    if settings.num_processes is not None and settings.num_processes > 1:
        from gemma_server.engine.lockstep import Leader, lockstep_address

        assert settings.coordinator_address is not None and isinstance(engine, Engine)
        _, port = lockstep_address(settings.coordinator_address)
        log.info("waiting for %d other process(es) to connect on port %d",
                 settings.num_processes - 1, port)
        leader = Leader(port, settings.num_processes - 1)
        engine.executor.announce = leader.announce
        if on_exit is not None:
            on_exit.append(leader.close)
    for adapter in adapters:
        engine.load_adapter(adapter)
        log.info("LoRA adapter %s loaded from %s (rank %d)", adapter.name, adapter.path,
                 adapter.rank)
    state.service = ModelService(name, tokenizer, engine, stop_ids)
    state.status = "ready"


class _WarmUpBar:
    """A progress bar over the shapes being compiled (shown on a terminal only)."""

    def __enter__(self) -> _WarmUpBar:
        self.bar: tqdm | None = None
        return self

    def update(self, done: int, total: int, shape: str) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc="compiling", unit="shape", disable=None)
        self.bar.n = done
        self.bar.set_postfix_str(shape, refresh=True)
        log.debug("compiling %s (%d/%d)", shape, done + 1, total)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


class DrainingServer(uvicorn.Server):
    """uvicorn, with a graceful drain on SIGTERM.

    SIGTERM marks the server draining (new requests get 503 with Retry-After, `/health`
    503), waits up to `shutdown_timeout` seconds for the engine's requests to finish, aborts
    those left with an error event, then lets uvicorn close the connections and exit 0.
    A second signal, or one before the model is ready, exits at once as uvicorn does.
    """

    def __init__(self, config: uvicorn.Config, state: ServerState, shutdown_timeout: float):
        super().__init__(config)
        self.state = state
        self.shutdown_timeout = shutdown_timeout
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self._draining or not self.state.ready:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        self.state.status = "draining"
        log.info("SIGTERM: draining (new requests get 503; up to %.0f s for %d in flight)",
                 self.shutdown_timeout, self._in_flight())
        threading.Thread(target=self._drain, name="gemma-drain", daemon=True).start()

    def _in_flight(self) -> int:
        stats = self.state.engine_stats()
        return 0 if stats is None else stats["requests"]

    def _drain(self) -> None:
        deadline = time.monotonic() + self.shutdown_timeout
        while self._in_flight() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self._in_flight()
        if left and self.state.service is not None:
            self.state.service.engine.abort_all(
                f"the server is shutting down: aborted after the {self.shutdown_timeout:g} s "
                "shutdown timeout")
            log.warning("drain timed out: %d request(s) aborted", left)
        else:
            log.info("drained: every request finished")
        self.should_exit = True


def serve(settings: ServerSettings) -> int:
    """Run the server until it is stopped; 0 after a clean stop or drain, 1 when the model
    could not be loaded or the engine loop died."""
    startup = Startup()
    api_keys = settings.api_keys()
    configure_logging(settings.log_level, settings.log_format, secrets=api_keys)
    if settings.coordinator_address is not None:
        from gemma_server.multihost import follow, join_slice

        join_slice(settings)
        if settings.process_id != 0:
            return follow(settings, preflight(settings))
    adapters = preflight(settings)
    state = ServerState(names=served_names(settings), api_keys=api_keys,
                        max_body_bytes=settings.max_body_bytes,
                        allow_runtime_lora=settings.allow_runtime_lora,
                        max_lora_rank=settings.max_lora_rank)
    failed: list[str] = []
    on_exit: list[Callable[[], None]] = []

    def fail(message: str) -> None:
        log.error("%s", message)
        state.status = "failed"
        failed.append(message)
        server.should_exit = True

    def start_loading(state: ServerState) -> None:
        def run() -> None:
            try:
                load_into(state, settings, adapters, startup, on_exit)
            except BaseException as exc:
                fail(f"could not load the model: {exc}")
                return
            log.info("ready in %.1f s (weights %.1f s, warm-up %.1f s): serving %s on "
                     "http://%s:%d", time.perf_counter() - startup.began, startup.load_seconds,
                     startup.compile_seconds, ", ".join(state.names), settings.host,
                     settings.port)
            assert state.service is not None
            engine = state.service.engine
            engine.wait()  # returns when the loop ends: stopped by us, or died
            if engine.failure is not None:
                fail(f"the engine loop died ({engine.failure!r}): exiting")

        threading.Thread(target=run, name="gemma-loader", daemon=True).start()

    app = create_app(state, on_startup=start_loading)
    config = uvicorn.Config(app, host=settings.host, port=settings.port,
                            log_level=settings.log_level, log_config=None, access_log=False,
                            timeout_graceful_shutdown=5)
    server = DrainingServer(config, state, settings.shutdown_timeout)
    server.run()
    if state.service is not None:
        state.service.engine.stop()
    for close in on_exit:
        close()
    return 1 if failed else 0
