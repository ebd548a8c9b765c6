"""Token selection on device, vectorised over rows (slots), every parameter a per-row array.

Nothing here is a static argument: a new temperature, seed or top-k never recompiles. The
order of processing, for each row:

1. non-finite logits (NaN, ±inf) are masked, and ids past the tokenizer's vocabulary too;
2. logit bias is added;
3. repetition penalty (Hugging Face): logits of tokens seen in the prompt or output are divided
   by the penalty when positive, multiplied when negative;
4. frequency and presence penalties (OpenAI): minus `freq * count + presence * (count > 0)`
   over generated tokens;
5. log-probabilities reported to clients are taken here, at temperature 1, before top-k/top-p;
6. temperature 0 takes the argmax; otherwise logits / temperature, top-k, top-p, and a draw with
   the row's own key (Gumbel-max), derived from its seed and its token index only.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from gemma_server.datatypes import MAX_TOP_K, MAX_TOP_LOGPROBS
from gemma_server.kernels import cpu_sampling

MASKED = -1e30


@struct.dataclass
class SamplingRows:
    """Per-row sampling parameters and history, R rows (a batch of slots)."""

    temperature: jax.Array  # [R] f32
    top_k: jax.Array  # [R] i32, 0 = off
    top_p: jax.Array  # [R] f32, >= 1 = off
    repetition_penalty: jax.Array  # [R] f32, 1 = off
    frequency_penalty: jax.Array  # [R] f32
    presence_penalty: jax.Array  # [R] f32
    key_data: jax.Array  # [R, 2] u32: the seed's two 32-bit words
    step: jax.Array  # [R] i32: draws so far (the stream index of the next draw); decode
    #                  counts a draw when it is fed the drawn token, before its own draw
    bias_ids: jax.Array  # [R, MAX_LOGIT_BIAS] i32, V (out of range) for unused entries
    bias_values: jax.Array  # [R, MAX_LOGIT_BIAS] f32
    prompt_seen: jax.Array  # [R, V] bool
    counts: jax.Array  # [R, V] i32: generated-token counts, also counted when fed back
    adapter: jax.Array  # [R] i32: LoRA stack row (0 = base model); not used by sampling
    wants_top: jax.Array  # [R] bool: the request asked for top logprobs


@struct.dataclass
class Sampled:
    tokens: jax.Array  # [R] i32
    logprob: jax.Array  # [R] f32, of the chosen token
    top_ids: jax.Array  # [R, MAX_TOP_LOGPROBS] i32
    top_logprobs: jax.Array  # [R, MAX_TOP_LOGPROBS] f32


def process_logits(logits: jax.Array, rows: SamplingRows, vocab_limit: int) -> jax.Array:
    """Steps 1–4: the logits whose softmax clients see as log-probabilities."""
    r, v = logits.shape
    ids = jnp.arange(v)[None, :]
    logits = jnp.where(jnp.isfinite(logits) & (ids < vocab_limit), logits, MASKED)
    row = jnp.arange(r)[:, None]
    logits = logits.at[row, rows.bias_ids].add(rows.bias_values, mode="drop")
    seen = rows.prompt_seen | (rows.counts > 0)
    penalty = rows.repetition_penalty[:, None]
    penalised = jnp.where(logits > 0, logits / penalty, logits * penalty)
    logits = jnp.where(seen & (logits > MASKED), penalised, logits)
    counts = rows.counts.astype(jnp.float32)
    logits = logits - rows.frequency_penalty[:, None] * counts
    logits = logits - rows.presence_penalty[:, None] * (counts > 0)
    return jnp.maximum(logits, MASKED)


def filter_top_k(logits: jax.Array, top_k: jax.Array) -> jax.Array:
    """Keep the k largest logits per row (ties at the k-th value are kept); 0 = off.

    It only runs when some row asks for it (lax.cond): XLA:CPU's top-k over a 256000-token
    vocabulary costs as much as a sort of it.
    """

    def apply(x: jax.Array) -> jax.Array:
        top = jax.lax.top_k(x, MAX_TOP_K)[0]  # [R, MAX_TOP_K], descending
        kth = jnp.take_along_axis(top, jnp.clip(top_k - 1, 0, MAX_TOP_K - 1)[:, None], axis=1)
        keep = (top_k[:, None] <= 0) | (x >= kth)
        return jnp.where(keep, x, MASKED)

    return jax.lax.cond(jnp.any(top_k > 0), apply, lambda x: x, logits)


def top_p_threshold(x: jax.Array, top_p: jax.Array) -> jax.Array:
    """Per row, the smallest logit of the nucleus: sorted descending, tokens are kept while the
    mass before them is < top_p (the first always). [R, 1]. XLA sorts the row; on CPU a kernel
    finds the same value without sorting (cpu_sampling.py; XLA:CPU's sort of 16 rows of
    256000 logits takes ~1 s)."""
    if cpu_sampling.wanted():
        return cpu_sampling.top_p_threshold(x, top_p)[:, None]
    sorted_desc = -jnp.sort(-x, axis=-1)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token
    kept = (before < top_p[:, None]) | (jnp.arange(x.shape[-1]) == 0)
    return jnp.min(jnp.where(kept, sorted_desc, jnp.inf), axis=-1, keepdims=True)


def filter_top_p(logits: jax.Array, top_p: jax.Array) -> jax.Array:
    """Keep the smallest set of most likely tokens whose probability reaches top_p; >= 1 = off.

    The threshold is only looked for when some row asks for it (lax.cond executes one branch).
    """

    def apply(x: jax.Array) -> jax.Array:
        keep = (top_p[:, None] >= 1.0) | (x >= top_p_threshold(x, top_p))
        return jnp.where(keep, x, MASKED)

    return jax.lax.cond(jnp.any(top_p < 1.0), apply, lambda x: x, logits)


def row_keys(key_data: jax.Array, step: jax.Array) -> jax.Array:
    """One PRNG key per row from its 64-bit seed and draw index: independent of the batch."""

    def one(data: jax.Array, index: jax.Array) -> jax.Array:
        return jax.random.fold_in(jax.random.wrap_key_data(data, impl="threefry2x32"), index)

    return jax.vmap(one)(key_data, step)


def first_argmax(x: jax.Array) -> jax.Array:
    """`jnp.argmax(x, axis=-1)` (the first index of the maximum) as two plain reductions.

    XLA:CPU lowers argmax to a variadic (value, index) reduce that it does not vectorise:
    0.15 ms per row over a 32000-token vocabulary, ~1% of a small model's decode step per
    row; a max and a min over the indices where it is reached vectorise.
    """
    top = jnp.max(x, axis=-1, keepdims=True)
    ids = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    return jnp.min(jnp.where(x == top, ids, x.shape[-1]), axis=-1)


def plain_greedy(rows: SamplingRows, vocab: int) -> jax.Array:
    """Whether every row is greedy with neutral penalties, no logit bias on an id below `vocab`
    and no top logprobs: its token is then the argmax of the masked logits (step 1 only)."""
    return (jnp.all(rows.temperature <= 0) & jnp.all(rows.repetition_penalty == 1)
            & jnp.all(rows.frequency_penalty == 0) & jnp.all(rows.presence_penalty == 0)
            & jnp.all((rows.bias_ids >= vocab) | (rows.bias_values == 0))
            & ~jnp.any(rows.wants_top))


def sample(logits: jax.Array, rows: SamplingRows, vocab_limit: int) -> Sampled:
    """Choose one token per row from float32 logits [R, V].

    Work no row needs is skipped at run time (`lax.cond` runs one branch): the top-k / top-p
    filters and the Gumbel noise over the vocabulary when every row is greedy, the top
    logprobs when no row asked for them. They cost as much as a small model's whole step.
    On CPU, a step whose rows are all `plain_greedy` goes to one kernel (cpu_sampling.py)
    instead of XLA's passes over the vocabulary (~10 ms a step at 16 rows of 256000 logits).
    """
    if cpu_sampling.wanted():
        def kernel(logits: jax.Array) -> Sampled:
            tokens, chosen = cpu_sampling.greedy_pick(logits, vocab_limit)
            top_logprobs, top_ids = _no_top_logprobs(logits.shape[0], chosen.dtype)
            return Sampled(tokens, chosen, top_ids, top_logprobs)

        return jax.lax.cond(plain_greedy(rows, logits.shape[-1]), kernel,
                            lambda logits: _sample(logits, rows, vocab_limit), logits)
    return _sample(logits, rows, vocab_limit)


def _sample(logits: jax.Array, rows: SamplingRows, vocab_limit: int) -> Sampled:
    """`sample` through XLA: every row's own parameters (steps 1-6 of the module docstring)."""
    processed = process_logits(logits, rows, vocab_limit)
    logprobs = jax.nn.log_softmax(processed, axis=-1)
    greedy = first_argmax(processed)

    def draw(processed: jax.Array) -> jax.Array:
        temperature = jnp.maximum(rows.temperature, 1e-6)[:, None]
        scaled = jnp.where(processed > MASKED, processed / temperature, MASKED)
        scaled = filter_top_p(filter_top_k(scaled, rows.top_k), rows.top_p)
        keys = row_keys(rows.key_data, rows.step)
        gumbel = jax.vmap(lambda k: jax.random.gumbel(k, (logits.shape[-1],)))(keys)
        return first_argmax(jnp.where(scaled > MASKED, scaled + gumbel, -jnp.inf))

    drawn = jax.lax.cond(jnp.any(rows.temperature > 0), draw, lambda _: greedy, processed)
    tokens = jnp.where(rows.temperature <= 0, greedy, drawn).astype(jnp.int32)
    chosen = jnp.take_along_axis(logprobs, tokens[:, None], axis=1)[:, 0]

    def top(logprobs: jax.Array) -> tuple[jax.Array, jax.Array]:
        values, ids = jax.lax.top_k(logprobs, MAX_TOP_LOGPROBS)
        return values, ids.astype(jnp.int32)

    def none(logprobs: jax.Array) -> tuple[jax.Array, jax.Array]:
        return _no_top_logprobs(logprobs.shape[0], logprobs.dtype)

    top_logprobs, top_ids = jax.lax.cond(jnp.any(rows.wants_top), top, none, logprobs)
    return Sampled(tokens, chosen, top_ids, top_logprobs)


def _no_top_logprobs(rows: int, dtype: jnp.dtype) -> tuple[jax.Array, jax.Array]:
    """The top-logprob fields of a step in which no row asked for them: -inf and id 0."""
    return (jnp.full((rows, MAX_TOP_LOGPROBS), -jnp.inf, dtype),
            jnp.zeros((rows, MAX_TOP_LOGPROBS), jnp.int32))


def record(state: SamplingRows, rows: jax.Array, tokens: jax.Array,
           active: jax.Array) -> SamplingRows:
    """Count each active row's last drawn token and advance its draw index, in the state's
    rows `rows` (an index equal to the row count is padding: dropped).

    Only the two history fields are written, in place: writing back every field of the
    gathered rows made XLA copy the whole state (twice) on each step.
    """
    add = active.astype(jnp.int32)
    counts = state.counts.at[rows, tokens].add(add, mode="drop")
    return dataclasses.replace(state, counts=counts,
                               step=state.step.at[rows].add(add, mode="drop"))
