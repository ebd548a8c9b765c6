"""Greedy token choice on CPU through our AVX-512 kernel (`cpu_sampling.cc`).

When every row of a step is greedy with no penalty, logit bias or top logprobs, sampling is
each row's argmax and that token's log-probability; XLA:CPU computes them in several unfused
passes over the vocabulary (0.7-1.0 ms a step for 16 rows of 32000 logits, ~10 ms for 16 rows
of Gemma's 256000), the kernel in two. engine/sampling.py picks it at run time, for such
steps only, where `library.available()`; everywhere else its pure-JAX path runs. A top-p
filter on CPU takes its threshold from a second kernel instead of sorting each row in XLA
(~1 s a step at 16 rows of 256000 logits).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gemma_server.kernels import library


def wanted() -> bool:
    """Whether greedy steps traced now may use the kernel."""
    return library.available()


def greedy_pick(logits: jax.Array, vocab_limit: int) -> tuple[jax.Array, jax.Array]:
    """Each row's first argmax (int32 [R]) and its log-probability (float32 [R]), over float32
    logits [R, V] with ids >= vocab_limit and non-finite values masked, as sampling.py's
    `sample` computes them for a greedy row without penalties or bias."""
    if library.load() is None:
        raise RuntimeError("the CPU kernels are not available here")
    rows = logits.shape[0]
    call = jax.ffi.ffi_call("gs_greedy_pick", (jax.ShapeDtypeStruct((rows,), jnp.int32),
                                               jax.ShapeDtypeStruct((rows,), jnp.float32)))
    tokens, logprob = call(logits.astype(jnp.float32), vocab_limit=np.int64(vocab_limit))
    return tokens, logprob


def top_p_threshold(logits: jax.Array, top_p: jax.Array) -> jax.Array:
    """Per row, the smallest logit a top-p filter keeps (float32 [R]; -inf where top_p >= 1):
    the smallest v whose probability mass strictly above it is < top_p, as sampling.py's
    sort-based filter finds it, without sorting (cpu_sampling.cc). logits: float32 [R, V],
    finite or MASKED."""
    if library.load() is None:
        raise RuntimeError("the CPU kernels are not available here")
    call = jax.ffi.ffi_call("gs_top_p_threshold",
                            jax.ShapeDtypeStruct((logits.shape[0],), jnp.float32))
    return call(logits.astype(jnp.float32), top_p.astype(jnp.float32))
