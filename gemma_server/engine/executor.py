"""Every compiled (jitted) function of gemma_server lives here.

The config is a static argument (it is frozen and hashable, so equal configs share compiled
code); the KV cache is donated, so a step updates it in place instead of copying it. Shapes
are the only other thing that triggers a compilation: callers pad to fixed buckets.
"""

from __future__ import annotations

from functools import partial

import jax

from gemma_server.model.cache import KVCache
from gemma_server.model.config import GemmaConfig
from gemma_server.model.forward import forward
from gemma_server.model.params import Params


@partial(jax.jit, static_argnames="cfg", donate_argnames="cache")
def forward_step(
    params: Params, tokens: jax.Array, positions: jax.Array, cache: KVCache, cfg: GemmaConfig
) -> tuple[jax.Array, KVCache]:
    """One cached forward step (prefill chunk or decode); the input cache is consumed."""
    logits, new_cache = forward(params, tokens, positions, cache, cfg)
    assert new_cache is not None
    return logits, new_cache


@partial(jax.jit, static_argnames="cfg")
def full_forward(
    params: Params, tokens: jax.Array, positions: jax.Array, cfg: GemmaConfig
) -> jax.Array:
    """Logits of whole sequences without a cache (scoring, parity checks)."""
    logits, _ = forward(params, tokens, positions, None, cfg)
    return logits
