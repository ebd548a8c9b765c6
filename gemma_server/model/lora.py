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
    """Per-row `x @ A[id] @ B[id]` for x [B, T, in]: gather + two batched matmuls.

    When no row uses an adapter (all ids 0) the work is skipped at run time (`lax.cond`
    executes one branch), so base-model traffic on a LoRA-enabled server pays almost nothing.
    """

    def delta(x: jax.Array) -> jax.Array:
        a, b = stacks[0][ids], stacks[1][ids]  # [B, in, R], [B, R, out]
        xa = jnp.einsum("btd,bdr->btr", x, a, preferred_element_type=jnp.float32)
        return jnp.einsum("btr,bro->bto", xa.astype(x.dtype), b,
                          preferred_element_type=jnp.float32).astype(x.dtype)

    out_features = stacks[1].shape[-1]
    return jax.lax.cond(jnp.any(ids > 0), delta,
                        lambda x: jnp.zeros((*x.shape[:-1], out_features), x.dtype), x)
