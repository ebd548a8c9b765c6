"""Decode-sized matrix products on CPU through our AVX-512 kernels (`cpu_matmul.c`).

XLA:CPU reads bfloat16 weights at a fraction of the memory bandwidth when a product has only
a few rows (batch-1 decode), float32 weights likewise from two rows on (batched decode), and
cannot multiply by int8 weights without first writing a widened copy of them. The C kernels
stream each weight once and widen it in registers; they are registered with XLA as custom
calls so they run inside the same compiled step as everything else. They are used only where
they win: on the CPU backend, for products with at most `MAX_ROWS` rows, when the compiled
library is present and the CPU has AVX-512. Everywhere else (GPU, TPU, prefill, older CPUs)
the pure-JAX path runs.

`GEMMA_SERVER_CPU_KERNELS=0` turns them off (to compare, or to rule them out).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import importlib.machinery
import math
import os
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp

MAX_ROWS = 16  # the decode slot buckets; prefill chunks go to XLA, fast with many rows

_OFF = ("0", "false", "off", "no")

_WEIGHT_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.int8))
# XLA's float32 product with one row streams the weights at memory speed already (measured
# 2.6 vs 3.0 ms on a 32000x1024 head); from two rows on it falls to a third of that, which the
# kernels keep (2 rows 2.5x, 8 rows 1.5x faster), so float32 starts there.
_MIN_ROWS = {jnp.dtype(jnp.float32): 2}
_OFF_WHILE_TRACING = contextvars.ContextVar("gemma_server_cpu_kernels_off", default=False)


def _library_path() -> Path | None:
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / f"_cpu_matmul{suffix}"
        if candidate.exists():
            return candidate
    return None


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The compiled kernels, registered with XLA once; None when they cannot be used here."""
    if os.environ.get("GEMMA_SERVER_CPU_KERNELS", "1").lower() in _OFF:
        return None
    path = _library_path()
    if path is None:
        return None
    lib = ctypes.CDLL(str(path))
    if not lib.gs_cpu_supported():
        return None
    for name in ("gs_matmul", "gs_matmul_scaled"):
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    return lib


def available() -> bool:
    """Whether products traced now will use the kernels (CPU backend, library, AVX-512)."""
    return jax.default_backend() == "cpu" and _library() is not None


def describe() -> str:
    """One line for logs and `gemma-server info`: which path decode products take here."""
    if available():
        return ("gemma_server CPU kernels (AVX-512) for float32/bfloat16/int8 weights, "
                f"<= {MAX_ROWS} rows")
    if jax.default_backend() != "cpu":
        return f"XLA ({jax.default_backend()})"
    reason = ("turned off by GEMMA_SERVER_CPU_KERNELS" if os.environ.get(
        "GEMMA_SERVER_CPU_KERNELS", "1").lower() in _OFF else
        "not built" if _library_path() is None else "this CPU lacks AVX-512")
    return f"XLA (CPU kernels {reason})"


def wanted(rows: int, weight_dtype: jnp.dtype) -> bool:
    """Whether a product with `rows` rows and these weights should go to the kernels."""
    dtype = jnp.dtype(weight_dtype)
    return (dtype in _WEIGHT_DTYPES and _MIN_ROWS.get(dtype, 1) <= rows <= MAX_ROWS
            and not _OFF_WHILE_TRACING.get() and available())


@contextlib.contextmanager
def kernels_off() -> Iterator[None]:
    """Trace with XLA's own products only: for a model sharded over several devices, whose
    products XLA must partition (it cannot split a custom call)."""
    token = _OFF_WHILE_TRACING.set(True)
    try:
        yield
    finally:
        _OFF_WHILE_TRACING.reset(token)


def matmul(x: jax.Array, w: jax.Array, scale: jax.Array | None = None) -> jax.Array:
    """float32 `x @ w.T`, times `scale` per output (row of w).

    x: [..., K] any float dtype; w: [N, K] float32, bfloat16 or int8; scale: [N] float32,
    required for int8. Only call when `wanted(...)` is true.
    """
    if _library() is None:
        raise RuntimeError("the CPU kernels are not available here")
    k = x.shape[-1]
    n = w.shape[0]
    lead = x.shape[:-1]
    rows = math.prod(lead)
    operands = [x.reshape(rows, k).astype(jnp.float32), w]
    name = "gs_matmul"
    if jnp.dtype(w.dtype) == jnp.int8:
        if scale is None:
            raise ValueError("int8 weights need their per-column scales")
        operands.append(scale.astype(jnp.float32))
        name += "_scaled"
    call = jax.ffi.ffi_call(name, jax.ShapeDtypeStruct((rows, n), jnp.float32))
    return call(*operands).reshape(*lead, n)
