"""Shared fixtures: tiny HF-format checkpoints written once per session, goldens, precision."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import jax
import numpy as np
import pytest

from gemma_server.model.checkpoint import Checkpoint, load_checkpoint
from gemma_server.model.hf_config import config_from_hf_dict
from gemma_server.model.synthetic import write_checkpoint
from gemma_server.model.tiny import TINY_SPECS

# Parity with float32 references needs full-precision matmuls on every backend.
jax.config.update("jax_default_matmul_precision", "highest")

GOLDENS = Path(__file__).parent / "goldens"
ARCHS = list(TINY_SPECS)  # tiny-gemma, tiny-gemma2, tiny-gemma3


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """name -> directory of that tiny checkpoint, written on first use."""
    root = tmp_path_factory.mktemp("tiny")
    written: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in written:
            spec = TINY_SPECS[name]
            written[name] = write_checkpoint(spec, root / name,
                                             config_from_hf_dict(dict(spec.hf_config)))
        return written[name]

    return get


@pytest.fixture(scope="session")
def tiny_model(tiny_dir: Callable[[str], Path]) -> Callable[..., Checkpoint]:
    """(name, dtype, quantize) -> loaded tiny checkpoint, cached for the session."""
    cache: dict[tuple[str, str, str | None], Checkpoint] = {}

    def get(name: str, dtype: str = "float32", quantize: str | None = None) -> Checkpoint:
        key = (name, dtype, quantize)
        if key not in cache:
            cache[key] = load_checkpoint(tiny_dir(name), dtype=dtype, progress=False,
                                         quantize=quantize)
        return cache[key]

    return get


def golden(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDENS / f"{name}.npz") as data:
        return dict(data)


def golden_prompts(name: str) -> list[int]:
    return sorted(int(k.split("_")[1]) for k in golden(name) if k.startswith("ids_"))


@pytest.fixture(autouse=True)
def _private_demo_cache(tmp_path_factory: pytest.TempPathFactory,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never write the demo model into the user's real cache."""
    monkeypatch.setenv("GEMMA_SERVER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@contextmanager
def backend_compilations() -> Iterator[list[str]]:
    """Collects the XLA backend compilations that happen inside the block."""
    compiles: list[str] = []

    def listener(event: str, duration: float, **kwargs: object) -> None:
        if "backend_compile" in event:
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
