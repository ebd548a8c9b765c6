"""The model-side half of LoRA: per-row adapter deltas inside the forward pass.

The forward pass receives stacked adapter weights and, per sequence, which row of the stacks
to use (row 0 is all zeros: the base model). Loading and validating adapters lives in
`gemma_server.lora`; this module only does the math, so the model never depends on it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

# Per layer: projection name -> (A [N, in, R], B [N, R, out]).
LayerStacks = dict[str, tuple[jax.Array, jax.Array]]


@struct.dataclass
class LoraBatch:
    """What the forward pass needs: the stacks, and which row of them each sequence uses."""

    stacks: tuple[LayerStacks, ...]
    ids: jax.Array  # [B] int32, 0 = base model


def lora_delta(x: jax.Array, stacks: tuple[jax.Array, jax.Array], ids: jax.Array) -> jax.Array:
    """Per-row `x @ A[id] @ B[id]` for x [B, T, in]: gather + two batched matmuls."""
    a, b = stacks[0][ids], stacks[1][ids]  # [B, in, R], [B, R, out]
    xa = jnp.einsum("btd,bdr->btr", x, a, preferred_element_type=jnp.float32).astype(x.dtype)
    return jnp.einsum("btr,bro->bto", xa, b, preferred_element_type=jnp.float32).astype(x.dtype)
