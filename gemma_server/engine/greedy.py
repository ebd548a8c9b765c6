"""A minimal greedy generation loop: prefill the prompt, then decode one token at a time.

It is the smallest correct use of the cache contract — used by `gemma-server generate` and by
tests — not the serving engine (continuous batching, sampling and scheduling come there).
"""

from __future__ import annotations

from collections.abc import Iterator

import jax.numpy as jnp
import numpy as np

from gemma_server.engine.executor import forward_step
from gemma_server.model.cache import init_cache
from gemma_server.model.config import GemmaConfig
from gemma_server.model.params import Params, compute_dtype


def greedy_tokens(
    params: Params,
    cfg: GemmaConfig,
    prompt: list[int],
    max_new_tokens: int,
    stop_ids: frozenset[int] = frozenset(),
    max_len: int | None = None,
) -> Iterator[int]:
    """Yield greedily chosen token ids until a stop id (not yielded) or `max_new_tokens`."""
    if not prompt:
        raise ValueError("prompt must contain at least one token")
    max_len = max_len or len(prompt) + max_new_tokens
    if len(prompt) + max_new_tokens > max_len:
        raise ValueError(f"prompt ({len(prompt)}) + max_new_tokens exceeds max_len {max_len}")
    cache = init_cache(cfg, 1, max_len, compute_dtype(params))
    tokens = jnp.asarray([prompt], jnp.int32)
    positions = jnp.arange(len(prompt), dtype=jnp.int32)[None]
    logits, cache = forward_step(params, tokens, positions, cache, cfg)
    position = len(prompt)
    for _ in range(max_new_tokens):
        token = int(np.asarray(jnp.argmax(logits[0, -1])))
        if token in stop_ids:
            return
        yield token
        logits, cache = forward_step(
            params, jnp.asarray([[token]], jnp.int32), jnp.asarray([[position]], jnp.int32),
            cache, cfg,
        )
        position += 1
