"""The AVX-512 decode kernels against a NumPy reference, and proof that decode uses them.

Shapes cover both code paths for bfloat16 (AVX512-BF16 pairs when N and K are multiples of
32, widening FMAs otherwise), float32, int8 with per-row scales, and every row count a decode
step can have (1..16, in blocks of 8). The product is `x @ W.T` with W stored [N, K] (params.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemma_server.kernels import cpu_matmul, library
from gemma_server.model.quantize import quantize_int8

pytestmark = pytest.mark.skipif(not library.available(),
                                reason=f"decode here: {library.describe()}")

SHAPES = [(64, 96), (1024, 3072), (96, 64), (40, 24), (33, 70), (64, 256)]  # (K, N)


def reference(x: np.ndarray, w: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    y = x.astype(np.float64) @ w.astype(np.float64)
    return y if scale is None else y * scale


@pytest.mark.parametrize("k,n", SHAPES)
@pytest.mark.parametrize("rows", [1, 3, 8, 13, 16])
@pytest.mark.parametrize("kind", ["float32", "bfloat16", "int8"])
def test_kernel_matches_reference(k, n, rows, kind):
    rng = np.random.default_rng(k * 1000 + n + rows)
    # x rounded to bfloat16 first, as the activations of a bfloat16 model are.
    x = np.asarray(jnp.asarray(rng.standard_normal((rows, k)), jnp.bfloat16), np.float32)
    if kind == "int8":
        w = rng.integers(-127, 128, (k, n)).astype(np.int8)
        scale = rng.uniform(0.001, 0.02, n).astype(np.float32)
    else:
        w = np.asarray(jnp.asarray(rng.standard_normal((k, n)), kind))
        scale = None
    fn = jax.jit(cpu_matmul.matmul)
    got = np.asarray(fn(x, np.ascontiguousarray(w.T), scale))
    want = reference(x, w.astype(np.float32), scale)
    assert got.shape == (rows, n) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_leading_dimensions_are_kept():
    x = jnp.ones((2, 1, 64), jnp.bfloat16)
    w = jnp.ones((32, 64), jnp.bfloat16)
    y = jax.jit(cpu_matmul.matmul)(x, w)
    assert y.shape == (2, 1, 32) and float(y[1, 0, 5]) == 64.0


def test_int8_without_scales_is_refused():
    with pytest.raises(ValueError, match="scales"):
        cpu_matmul.matmul(jnp.ones((1, 32)), jnp.ones((32, 32), jnp.int8))


def test_quantized_weights_through_the_kernel_equal_dequantized_weights():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.standard_normal((128, 256)) * 0.05, jnp.float32)
    q = quantize_int8(w, channel_axis=0)
    x = jnp.asarray(rng.standard_normal((4, 256)), jnp.float32)
    got = jax.jit(cpu_matmul.matmul)(x, q.q, q.scale)
    want = x @ q.dequantize(jnp.float32).T
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,quantize", [("bfloat16", None), ("bfloat16", "int8"),
                                           ("float32", None)])
def test_decode_step_calls_the_kernels_and_prefill_does_not(tiny_model, dtype, quantize):
    from gemma_server.model.cache import init_cache
    from gemma_server.model.forward import forward

    model = tiny_model("tiny-gemma", dtype, quantize)

    def hlo(rows: int, tokens: int) -> str:
        cache = init_cache(model.config, rows, 64, jnp.dtype(dtype))
        ids = jnp.zeros((rows, tokens), jnp.int32)
        positions = jnp.tile(jnp.arange(tokens)[None], (rows, 1))
        return jax.jit(forward, static_argnames="cfg").lower(
            model.params, ids, positions, cache, cfg=model.config).as_text()

    decode, prefill = hlo(2, 1), hlo(2, 32)
    # qkv, o, gate_up, down in every layer, and the tied head
    assert decode.count("@gs_matmul") >= 4 * model.config.num_layers + 1
    assert "gs_matmul" not in prefill  # 64 rows: XLA's own matmuls
    # attention straight out of the cache at decode, one call a layer; XLA's at prefill
    assert decode.count("@gs_decode_attention") == model.config.num_layers
    assert "gs_decode_attention" not in prefill
    # one row too, float32 included (XLA's one-row float32 product streams on one thread)
    assert "gs_matmul" in hlo(1, 1)
