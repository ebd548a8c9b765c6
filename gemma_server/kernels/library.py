"""The compiled CPU kernels (`_cpu_kernels`, built by setup.py from the `.cc` files here):
loading them, registering their XLA custom calls, and deciding whether a trace may use them.

They are used only on the CPU backend, when the library was built and the CPU has AVX-512;
everywhere else (GPU, TPU, older CPUs, a model sharded over a mesh) the pure-JAX path runs.
`GEMMA_SERVER_CPU_KERNELS=0` turns them off (to compare, or to rule them out).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import importlib.machinery
import os
from collections.abc import Iterator
from pathlib import Path

import jax

TARGETS = ("gs_matmul", "gs_matmul_scaled", "gs_decode_attention", "gs_greedy_pick",
           "gs_top_p_threshold")
_OFF = ("0", "false", "off", "no")
_OFF_WHILE_TRACING = contextvars.ContextVar("gemma_server_cpu_kernels_off", default=False)


def library_path() -> Path | None:
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / f"_cpu_kernels{suffix}"
        if candidate.exists():
            return candidate
    return None


def _switched_off() -> bool:
    return os.environ.get("GEMMA_SERVER_CPU_KERNELS", "1").lower() in _OFF


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled kernels, registered with XLA once; None when they cannot be used here."""
    if _switched_off():
        return None
    path = library_path()
    if path is None:
        return None
    lib = ctypes.CDLL(str(path))
    if not lib.gs_cpu_supported():
        return None
    for name in TARGETS:
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    return lib


def available() -> bool:
    """Whether products and attention traced now may use the kernels (CPU backend, library,
    AVX-512, not inside `kernels_off`)."""
    return (jax.default_backend() == "cpu" and not _OFF_WHILE_TRACING.get()
            and load() is not None)


def describe() -> str:
    """One line for logs and `gemma-server info`: which path decode takes here."""
    if jax.default_backend() == "cpu" and load() is not None:
        return ("gemma_server CPU kernels (AVX-512): decode products with float32/bfloat16/int8 "
                "weights, decode attention, greedy sampling and top-p thresholds")
    if jax.default_backend() != "cpu":
        return f"XLA ({jax.default_backend()})"
    reason = ("turned off by GEMMA_SERVER_CPU_KERNELS" if _switched_off() else
              "not built" if library_path() is None else "this CPU lacks AVX-512")
    return f"XLA (CPU kernels {reason})"


@contextlib.contextmanager
def kernels_off() -> Iterator[None]:
    """Trace with XLA's own operations only: for a model sharded over several devices, which
    XLA must partition (it cannot split a custom call)."""
    token = _OFF_WHILE_TRACING.set(True)
    try:
        yield
    finally:
        _OFF_WHILE_TRACING.reset(token)
