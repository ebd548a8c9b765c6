"""Decode-sized matrix products on CPU through our AVX-512 kernels (`cpu_matmul.cc`).

XLA:CPU reads bfloat16 weights at a fraction of the memory bandwidth when a product has only
a few rows (batch-1 decode), float32 weights on one thread with one row (256 MB, alternating
with a two-thread C probe: XLA 30-32 GB/s, the kernel 34-57, the probe 56-66) and at a third of
the bandwidth from two rows on, and cannot multiply by int8 weights without first writing a
widened copy of them. The C kernels stream each weight once and widen it in registers; they
are registered with XLA as custom calls (library.py) so they run inside the same compiled
step as everything else. They are used only where they win: products with at most
`MAX_ROWS` rows, where `library.available()`. Everywhere else (GPU, TPU, prefill, older
CPUs) the pure-JAX path runs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from gemma_server.kernels import library

MAX_ROWS = 16  # the decode slot buckets; prefill chunks go to XLA, fast with many rows

_WEIGHT_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.int8))


def wanted(rows: int, weight_dtype: jnp.dtype) -> bool:
    """Whether a product with `rows` rows and these weights should go to the kernels."""
    dtype = jnp.dtype(weight_dtype)
    return dtype in _WEIGHT_DTYPES and rows <= MAX_ROWS and library.available()


def matmul(x: jax.Array, w: jax.Array, scale: jax.Array | None = None) -> jax.Array:
    """float32 `x @ w.T`, times `scale` per output (row of w).

    x: [..., K] any float dtype; w: [N, K] float32, bfloat16 or int8; scale: [N] float32,
    required for int8. Only call when `wanted(...)` is true.
    """
    if library.load() is None:
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
