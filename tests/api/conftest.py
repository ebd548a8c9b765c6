"""A real uvicorn server on a tiny checkpoint, shared by the API tests of a session."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from gemma_server.api import ServerState, create_app
from gemma_server.config import EngineConfig
from gemma_server.engine.engine import Engine
from gemma_server.loading import load_model
from gemma_server.lora import load_adapter
from gemma_server.service import ModelService

MODEL = "tiny-gemma2"
ALIAS = "@hf/google/gemma-7b-it"
API_KEY = "sk-test-key"
CONFIG = EngineConfig(max_batch_size=16, max_total_tokens=256, max_input_length=200,
                      max_batch_prefill_tokens=64, prefill_buckets=(16, 64),
                      prefill_batch_sizes=(1, 4), max_waiting=32, max_loras=3,
                      max_lora_rank=8)
LORA_DIR = Path(__file__).parents[1] / "goldens" / "lora"
ADAPTERS = {"attn-lora": "attn", "all-lora": "all"}  # served name -> golden adapter


@dataclasses.dataclass
class RunningServer:
    url: str
    state: ServerState
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(state: ServerState) -> RunningServer:
    port = _free_port()
    config = uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning",
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return RunningServer(f"http://127.0.0.1:{port}", state, server, thread)


@pytest.fixture(scope="session")
def service(tiny_dir) -> Iterator[ModelService]:
    model = load_model(tiny_dir(MODEL), progress=False)
    engine = Engine(model.checkpoint.params, model.checkpoint.config, CONFIG,
                    vocab_limit=model.tokenizer.vocab_size)
    engine.start()
    for name, folder in ADAPTERS.items():
        engine.load_adapter(load_adapter(name, LORA_DIR / folder, model.checkpoint.config,
                                         max_rank=8))
    yield ModelService(MODEL, model.tokenizer, engine, model.stop_ids)
    engine.stop()


@pytest.fixture(scope="session")
def server(service) -> Iterator[RunningServer]:
    state = ServerState(names=[MODEL, ALIAS], max_body_bytes=64 * 1024, service=service,
                        status="ready")
    running = start_server(state)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def secured(service) -> Iterator[RunningServer]:
    state = ServerState(names=[MODEL], api_keys=[API_KEY, "second-key"], service=service,
                        status="ready", allow_runtime_lora=True, max_lora_rank=8)
    running = start_server(state)
    yield running
    running.stop()


@pytest.fixture
def http(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def wait_idle(service: ModelService, timeout: float = 10.0) -> dict[str, int]:
    deadline = time.time() + timeout
    stats = service.engine.stats()
    while time.time() < deadline:
        stats = service.engine.stats()
        if stats["decoding"] == 0 and stats["prefilling"] == 0 and stats["waiting"] == 0:
            break
        time.sleep(0.02)
    return stats
