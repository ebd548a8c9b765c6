"""`gemma-server serve`: settings -> HTTP server listening at once -> model loaded behind it.

The server listens before the weights are loaded, so `/health` answers 503 while loading and
warming and 200 once ready; a load failure stops the server with exit status 1.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import uvicorn

from gemma_server.api import ServerState, create_app
from gemma_server.demo import DEMO_NAME, demo_checkpoint_dir
from gemma_server.errors import ConfigurationError
from gemma_server.lora import LoraAdapter, load_adapter
from gemma_server.model.checkpoint import resolve_checkpoint_dir, resolve_dtype
from gemma_server.model.hf_config import load_hf_config
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
    config.json, limits, and every LoRA adapter (returned, loaded on the host)."""
    resolve_dtype(settings.dtype)
    path = demo_checkpoint_dir() if settings.checkpoint is None else \
        resolve_checkpoint_dir(settings.checkpoint)
    cfg = load_hf_config(path)
    if settings.max_total_tokens > cfg.max_position_embeddings:
        raise ConfigurationError(
            f"max_total_tokens ({settings.max_total_tokens}) exceeds the model's "
            f"max_position_embeddings ({cfg.max_position_embeddings})")
    adapters = [load_adapter(name, source, cfg, settings.max_lora_rank)
                for name, source in settings.lora_sources()]
    settings.engine_config(settings.lora_capacity(len(adapters)))
    return adapters


def load_into(state: ServerState, settings: ServerSettings,
              adapters: list[LoraAdapter]) -> None:
    """Load weights, start and warm the engine, load the adapters, then mark ready."""
    from gemma_server.engine.engine import Engine
    from gemma_server.kernels.cpu_matmul import describe as describe_kernels
    from gemma_server.loading import load_model
    from gemma_server.service import ModelService

    model = load_model(settings.checkpoint, settings.dtype, quantize=settings.quantize)
    state.status = "warming"
    capacity = settings.lora_capacity(len(adapters))
    engine = Engine(model.checkpoint.params, model.checkpoint.config,
                    settings.engine_config(capacity), vocab_limit=model.tokenizer.vocab_size)
    weights, kv_cache = engine.executor.memory_bytes()
    log.info("memory plan: weights %.2f GB + KV cache %.2f GB (%d slots x %d tokens)",
             weights / 1e9, kv_cache / 1e9, engine.executor.slots,
             settings.max_total_tokens)
    engine.start(progress=lambda shape: log.info("compiling %s", shape))
    log.info("compiled in %.1f s; decode matmuls: %s", engine.executor.compile_seconds,
             describe_kernels())
    for adapter in adapters:
        engine.load_adapter(adapter)
        log.info("LoRA adapter %s loaded from %s (rank %d)", adapter.name, adapter.path,
                 adapter.rank)
    state.service = ModelService(state.names[0], model.tokenizer, engine, model.stop_ids)
    state.status = "ready"


def serve(settings: ServerSettings) -> int:
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    adapters = preflight(settings)
    state = ServerState(names=served_names(settings), api_keys=settings.api_keys(),
                        max_body_bytes=settings.max_body_bytes,
                        allow_runtime_lora=settings.allow_runtime_lora,
                        max_lora_rank=settings.max_lora_rank)
    failed: list[BaseException] = []

    def start_loading(state: ServerState) -> None:
        def run() -> None:
            try:
                load_into(state, settings, adapters)
                log.info("ready: serving %s on http://%s:%d", ", ".join(state.names),
                         settings.host, settings.port)
            except BaseException as exc:
                log.error("could not load the model: %s", exc)
                state.status = "failed"
                failed.append(exc)
                server.should_exit = True

        threading.Thread(target=run, name="gemma-loader", daemon=True).start()

    app = create_app(state, on_startup=start_loading)
    config = uvicorn.Config(app, host=settings.host, port=settings.port,
                            log_level=settings.log_level, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    server.run()
    if state.service is not None:
        state.service.engine.stop()
    return 1 if failed else 0
