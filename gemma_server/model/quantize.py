"""Weight-only int8 quantization: one int8 per weight, one float32 scale per output channel.

Decode streams every weight once per step, so its speed is the weights' byte count: int8
halves bfloat16's. Activations, norms, the KV cache and all accumulation stay in the compute
dtype / float32; only the big matrices are quantized (symmetric, round to nearest, scale =
max |w| / 127 over each output channel), when the checkpoint is loaded.

Output channels: every matrix is stored `[out, in]` (params.py), so each row has one scale;
for the embedding `[V, D]` a row is both a token's vector (the lookup dequantizes the rows it
gathers) and an output channel of the tied head.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from gemma_server.model.config import GemmaConfig
from gemma_server.model.params import tensor_specs

QUANTIZATIONS = ("int8",)


@struct.dataclass
class Int8Weight:
    """A quantized matrix: `q * scale` approximates the float weight along `channel_axis`."""

    q: jax.Array  # int8, the float weight's shape
    scale: jax.Array  # float32, one per output channel
    channel_axis: int = struct.field(pytree_node=False, default=0)

    def dequantize(self, dtype: jnp.dtype) -> jax.Array:
        scale = self.scale[None, :] if self.channel_axis == 1 else self.scale[:, None]
        return (self.q.astype(jnp.float32) * scale).astype(dtype)


def stack_rows(weights: list[Any]) -> Any:
    """Matrices [out_i, in] one above the other as [sum out_i, in], float or int8 (with
    their scales)."""
    if isinstance(weights[0], Int8Weight):
        return Int8Weight(q=jnp.concatenate([w.q for w in weights]),
                          scale=jnp.concatenate([w.scale for w in weights]), channel_axis=0)
    return jnp.concatenate(weights)


def quantize_int8(w: jax.Array, channel_axis: int) -> Int8Weight:
    """Symmetric per-channel int8 of a 2-D float weight (channel_axis: the output axis)."""
    wf = w.astype(jnp.float32)
    reduce_axis = 1 - channel_axis
    peak = jnp.max(jnp.abs(wf), axis=reduce_axis)
    scale = jnp.where(peak > 0, peak / 127.0, 1.0)
    expanded = scale[None, :] if channel_axis == 1 else scale[:, None]
    q = jnp.clip(jnp.round(wf / expanded), -127, 127).astype(jnp.int8)
    return Int8Weight(q=jax.block_until_ready(q), scale=scale,
                      channel_axis=channel_axis)


def quantized_leaf(path: tuple[str | int, ...]) -> int | None:
    """The output-channel axis of a parameter that int8 quantizes, or None to keep it as is."""
    if path[-1] in ("embed", "lm_head", "q", "k", "v", "o", "gate", "up", "down"):
        return 0  # rows: see the module docstring
    return None


def weight_bytes(cfg: GemmaConfig, dtype: jnp.dtype, quantize: str | None) -> int:
    """Bytes the parameters of `cfg` take once loaded in `dtype` (and quantized): what one
    decode step reads, every weight once (a tied head reads the embedding)."""
    total = 0
    for spec in tensor_specs(cfg):
        count = math.prod(spec.shape)
        axis = quantized_leaf(spec.path) if quantize == "int8" else None
        # int8 values + a float32 scale per output channel
        total += count * jnp.dtype(dtype).itemsize if axis is None else count + 4 * spec.shape[axis]
    return total


def embed_rows(embed: jax.Array | Int8Weight, tokens: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """The embedding rows of `tokens` in the compute dtype (dequantized when int8)."""
    if isinstance(embed, Int8Weight):
        return (embed.q[tokens].astype(jnp.float32) * embed.scale[tokens][..., None]).astype(dtype)
    return embed[tokens]
