"""The numeric building blocks of the Gemma decoder, each matching the references exactly.

See `../shared/spec/gemma.md` §2–4 for why each detail is as it is; the docstrings name the
trap each function avoids.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from gemma_server.kernels import cpu_matmul
from gemma_server.model.quantize import Int8Weight

F32 = jnp.float32
Weight = jax.Array | Int8Weight


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm with the Gemma `(1 + w)` scale, computed in float32 and cast back at the end.

    The stored weight is an offset from 1; multiplying by `w` alone is the classic port bug.
    """
    xf = x.astype(F32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (y * (1.0 + weight.astype(F32))).astype(x.dtype)


def dense(x: jax.Array, w: Weight) -> jax.Array:
    """`x @ w.T` accumulated in float32 (fast and accurate for bfloat16), in x's dtype."""
    return project(x, w).astype(x.dtype)


def project(x: jax.Array, w: Weight) -> jax.Array:
    """float32 `x @ w.T` for w `[out, in]`, float or int8-quantized per row (output channel).

    Decode-sized products on CPU go to our kernels, which stream the weights at memory speed
    (kernels/cpu_matmul.py); everything else to XLA.
    """
    rows = math.prod(x.shape[:-1])
    q, scale = (w.q, w.scale) if isinstance(w, Int8Weight) else (w, None)
    if cpu_matmul.wanted(rows, q.dtype):
        return cpu_matmul.matmul(x, q, scale)
    dims = (((x.ndim - 1,), (1,)), ((), ()))
    operand = q.astype(x.dtype) if scale is not None else q
    y = jax.lax.dot_general(x, operand, dims, preferred_element_type=F32)
    return y if scale is None else y * scale


def gelu_tanh(x: jax.Array) -> jax.Array:
    """The tanh approximation of GELU: every Gemma reference uses it, whatever the config says.

    Computed in float32 and rounded once, as PyTorch's GELU does for a bfloat16 tensor (HF's
    `gelu_pytorch_tanh`). In bfloat16, jax.nn.gelu rounds after each of its ~8 operations
    (bf16 log-probs against the float32 goldens, mean |Δ|: tiny-gemma 0.0541 -> 0.0528 with the
    single rounding, tiny-gemma3 0.0217 -> 0.0213).
    """
    return jax.nn.gelu(x.astype(F32), approximate=True).astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float, scale: float) -> jax.Array:
    """Rotate-half RoPE: dimension i turns with i + Hd/2 (never interleaved pairs).

    x: [B, T, heads, Hd]; positions: [B, T]. Linear scaling divides the angle by `scale`.
    The angles are computed in float32 as the references do; the result takes x's dtype.
    """
    half = x.shape[-1] // 2
    exponents = jnp.arange(0, half, dtype=F32) * 2.0 / x.shape[-1]
    inv_freq = 1.0 / (theta**exponents) / scale  # [Hd/2]
    angles = positions.astype(F32)[..., None] * inv_freq  # [B, T, Hd/2]
    cos = jnp.cos(angles)[:, :, None, :].astype(x.dtype)
    sin = jnp.sin(angles)[:, :, None, :].astype(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def soft_cap(x: jax.Array, cap: float | None) -> jax.Array:
    """cap * tanh(x / cap): Gemma 2 bounds attention scores (50) and final logits (30)."""
    if cap is None:
        return x
    return cap * jnp.tanh(x / cap)
