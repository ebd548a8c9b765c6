"""The AVX-512 decode attention kernel against a NumPy reference of the same semantics, and
against forward.py's pure-JAX attention in a whole decode step.

Cases cover float32 and bfloat16 (uint16) caches, every queries-per-kv-head count the kernel
takes, head dims that are not multiples of 16, ring buffers that have wrapped, sliding
windows, soft caps, padding rows that see nothing, and a call that reads only some of the
cache's rows and entries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemma_server.kernels import cpu_attention, library
from gemma_server.model.cache import init_cache
from gemma_server.model.forward import forward

pytestmark = pytest.mark.skipif(not library.available(),
                                reason=f"decode here: {library.describe()}")


def reference(q, keys, values, positions, length, scale, cap, window, bf16):
    """float64 NumPy: the semantics cpu_attention.cc documents."""
    b_rows, k_heads, g, hd = q.shape
    size = keys.shape[2]
    out = np.zeros(q.shape)
    for b in range(b_rows):
        pos = int(positions[b])
        last = max(pos, 0)
        held = np.array([last - ((last - j) % size) for j in range(length)])
        seen = (held >= 0) & (held <= pos)
        if window:
            seen &= held > pos - window
        for k in range(k_heads):
            s = q[b, k].astype(np.float64) @ keys[b, k, :length].astype(np.float64).T * scale
            if cap:
                s = cap * np.tanh(s / cap)
            s = np.where(seen[None, :], s, -1e30)
            p = np.exp(s - s.max(axis=-1, keepdims=True))
            p /= p.sum(axis=-1, keepdims=True)
            if bf16:
                p = np.asarray(jnp.asarray(p.astype(np.float32), jnp.bfloat16), np.float64)
            out[b, k] = p @ values[b, k, :length].astype(np.float64)
    return out


CASES = [  # (B, cache rows, K, G, Hd, S, length, positions, scale, cap, window)
    (1, 1, 2, 4, 128, 64, 64, [40], 0.088, None, None),
    (3, 4, 1, 8, 256, 48, 32, [0, 31, -1], 0.0625, None, None),
    (2, 2, 2, 2, 24, 8, 8, [3, 21], 0.17, 3.0, None),  # ring buffer wrapped, soft cap
    (4, 5, 1, 4, 32, 16, 16, [5, 40, -1, 15], 0.2, None, 6),  # sliding window
    (2, 2, 4, 1, 40, 32, 20, [19, 7], 0.15, 50.0, None),
    (16, 16, 2, 16, 64, 32, 32, list(range(0, 32, 2)), 0.125, None, 10),
]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_reference(case, dtype):
    b, rows, k, g, hd, size, length, positions, scale, cap, window = case
    rng = np.random.default_rng(b * 100 + hd)
    q = rng.standard_normal((b, k, g, hd)).astype(np.float32)
    keys = rng.standard_normal((rows, k, size, hd)).astype(np.float32)
    values = rng.standard_normal((rows, k, size, hd)).astype(np.float32)
    bf16 = dtype == "bfloat16"
    if bf16:  # the cache keeps bfloat16 as uint16 bits; q is bfloat16-exact in such a model
        q, keys, values = (np.asarray(jnp.asarray(a, jnp.bfloat16), np.float32)
                           for a in (q, keys, values))
        stored = [jax.lax.bitcast_convert_type(jnp.asarray(a, jnp.bfloat16), jnp.uint16)
                  for a in (keys, values)]
    else:
        stored = [jnp.asarray(keys), jnp.asarray(values)]
    pos = np.asarray(positions, np.int32)
    got = jax.jit(cpu_attention.decode_attention, static_argnums=(4, 5, 6, 7))(
        q, *stored, pos, length, scale, cap, window)
    want = reference(q, keys, values, pos, length, scale, cap, window, bf16)
    assert got.shape == q.shape and got.dtype == np.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5 if not bf16 else 1e-2)


@pytest.mark.parametrize("name", ["tiny-gemma", "tiny-gemma2", "tiny-gemma3"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decode_step_matches_xla_attention(tiny_model, name, dtype):
    """A whole decode step over a prefilled cache, kernel vs XLA's attention: the same logits
    (Gemma 2's soft cap and sliding layers, Gemma 3's ring buffers, Gemma 1's MQA)."""
    model = tiny_model(name, dtype)
    cfg, params = model.config, model.params
    b, prompt = 3, 20
    rng = np.random.default_rng(7)
    tokens = rng.integers(3, cfg.vocab_size, (b, prompt)).astype(np.int32)
    positions = np.tile(np.arange(prompt, dtype=np.int32), (b, 1))
    positions[2, 12:] = -1  # a shorter prompt: row 2 decodes at position 12
    cache = init_cache(cfg, b, 64, jnp.dtype(params["final_norm"].dtype))
    _, cache = jax.jit(forward, static_argnames="cfg")(params, tokens, positions, cache, cfg)
    step_tokens = jnp.asarray([[5], [9], [11]], jnp.int32)
    step_pos = jnp.asarray([[prompt], [prompt], [12]], jnp.int32)

    def step(params, cache):
        return forward(params, step_tokens, step_pos, cache, cfg, attend_len=32)[0]

    with_kernel = jax.jit(step)(params, cache)
    with library.kernels_off():
        with_xla = jax.jit(step)(params, cache)
    tol = 1e-4 if dtype == "float32" else 0.05
    np.testing.assert_allclose(np.asarray(with_kernel), np.asarray(with_xla), atol=tol, rtol=tol)

