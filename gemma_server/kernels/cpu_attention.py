"""Decode attention on CPU through our AVX-512 kernel (`cpu_attention.cc`).

At decode (one query per sequence) XLA:CPU copies the keys into a transposed layout, runs two
small batched products and several mask / softmax passes: on bench-150m ~2.5 ms of a 15 ms
bfloat16 batch-1 step. The kernel reads each (sequence, kv head)'s keys and values once, in
place in the cache, and skips entries no query can see. Where `library.available()` is false
(GPU, TPU, a sharded model, no AVX-512) forward.py's pure-JAX attention runs instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gemma_server.kernels import library

_GROUPS = (1, 2, 4, 8, 16)  # queries per kv head the kernel is built for


def wanted(queries_per_kv: int, cache_dtype: jnp.dtype) -> bool:
    """Whether decode attention over a cache of this dtype should go to the kernel."""
    return (queries_per_kv in _GROUPS
            and jnp.dtype(cache_dtype) in (jnp.dtype(jnp.float32), jnp.dtype(jnp.uint16))
            and library.available())


def decode_attention(q: jax.Array, keys: jax.Array, values: jax.Array, positions: jax.Array,
                     length: int, scale: float, softcap: float | None,
                     window: int | None) -> jax.Array:
    """Attention of one query per sequence over its cache entries, in float32.

    q: [B, K, G, Hd] (RoPE applied); keys, values: [Bc, K, S, Hd] float32 or uint16
    (bfloat16 bits), Bc >= B, of which rows [0, B) and entries [0, length) are read;
    positions: [B] each query's position (-1: a padding row). Returns [B, K, G, Hd].
    Masks, soft cap and softmax are forward.py's `_attend_block` (see cpu_attention.cc).
    """
    if library.load() is None:
        raise RuntimeError("the CPU kernels are not available here")
    call = jax.ffi.ffi_call("gs_decode_attention", jax.ShapeDtypeStruct(q.shape, jnp.float32))
    return call(q.astype(jnp.float32), keys, values, positions.astype(jnp.int32),
                length=np.int64(length), scale=np.float32(scale),
                softcap=np.float32(softcap or 0.0), window=np.int64(window or 0))
