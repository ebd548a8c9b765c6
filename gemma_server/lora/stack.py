"""LoRA weights on device: one stack per projection, `[capacity + 1, ...]`, padded to max rank.

Index 0 is the zero adapter (the base model); loaded adapters occupy 1..capacity. Shapes depend
only on the base config, the capacity and the max rank, so loading, swapping or unloading an
adapter rewrites rows of the stacks without changing any compiled shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from gemma_server.lora.adapter import TARGETS, LoraAdapter, projection_shape
from gemma_server.model.config import GemmaConfig

# Per layer: target -> (A [N, in, R], B [N, R, out]); per adapter the same without N.
LayerStacks = dict[str, tuple[jax.Array, jax.Array]]


@struct.dataclass
class LoraBatch:
    """What the forward pass needs: the stacks, and which row of them each sequence uses."""

    stacks: tuple[LayerStacks, ...]
    ids: jax.Array  # [B] int32, 0 = base model


def empty_stacks(cfg: GemmaConfig, capacity: int, rank: int, dtype: jnp.dtype) -> \
        tuple[LayerStacks, ...]:
    n = capacity + 1
    layers = []
    for _ in range(cfg.num_layers):
        layer = {}
        for target in TARGETS:
            fan_in, fan_out = projection_shape(cfg, target)
            layer[target] = (jnp.zeros((n, fan_in, rank), dtype),
                             jnp.zeros((n, rank, fan_out), dtype))
        layers.append(layer)
    return tuple(layers)


def adapter_rows(adapter: LoraAdapter | None, cfg: GemmaConfig, rank: int,
                 dtype: jnp.dtype) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], ...]:
    """One adapter as a row of every stack (zeros where it has no weights; None: all zeros)."""
    np_dtype = jnp.dtype(dtype)  # a numpy dtype (bfloat16 through ml_dtypes)
    layers = []
    for layer in range(cfg.num_layers):
        rows = {}
        for target in TARGETS:
            fan_in, fan_out = projection_shape(cfg, target)
            a = np.zeros((fan_in, rank), np.float32)
            b = np.zeros((rank, fan_out), np.float32)
            if adapter is not None and (layer, target) in adapter.weights:
                wa, wb = adapter.weights[(layer, target)]
                a[:, :wa.shape[1]] = wa
                b[:wb.shape[0], :] = wb
            rows[target] = (a.astype(np_dtype), b.astype(np_dtype))
        layers.append(rows)
    return tuple(layers)


def lora_delta(x: jax.Array, stacks: tuple[jax.Array, jax.Array], ids: jax.Array) -> jax.Array:
    """Per-row `x @ A[id] @ B[id]` for x [B, T, in]: gather + two batched matmuls."""
    a, b = stacks[0][ids], stacks[1][ids]  # [B, in, R], [B, R, out]
    xa = jnp.einsum("btd,bdr->btr", x, a, preferred_element_type=jnp.float32).astype(x.dtype)
    return jnp.einsum("btr,bro->bto", xa, b, preferred_element_type=jnp.float32).astype(x.dtype)
