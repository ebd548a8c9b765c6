"""The engine's device steps as pure functions: insert, prefill, fork and decode.

`executor.py` compiles them; here they are plain functions of arrays so they can be read and
tested without the engine. All operate on the whole slot state (`SamplingRows` with one row
per slot) and the slot KV cache. Row indices equal to the slot count are padding: reads clamp,
writes (`mode="drop"`) are discarded.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gemma_server.datatypes import MAX_LOGIT_BIAS, MAX_TOP_LOGPROBS, SamplingParams
from gemma_server.engine.sampling import Sampled, SamplingRows, record, sample
from gemma_server.model.cache import KVCache
from gemma_server.model.config import GemmaConfig
from gemma_server.model.forward import forward
from gemma_server.model.lora import LayerStacks, LoraBatch
from gemma_server.model.params import Params


def set_adapter(stacks: tuple[LayerStacks, ...], row: jax.Array,
                rows: tuple[LayerStacks, ...]) -> tuple[LayerStacks, ...]:
    """Write one adapter (its A/B for every layer and target) into row `row` of the stacks."""
    return jax.tree_util.tree_map(lambda s, a: s.at[row].set(a.astype(s.dtype)), stacks, rows)


def init_state(slots: int, vocab: int, xp: Any = jnp) -> SamplingRows:
    """Neutral sampling rows; `xp=numpy` builds them on the host (no device op to compile)."""
    f32, i32 = xp.float32, xp.int32
    return SamplingRows(
        temperature=xp.zeros(slots, f32), top_k=xp.zeros(slots, i32),
        top_p=xp.ones(slots, f32), repetition_penalty=xp.ones(slots, f32),
        frequency_penalty=xp.zeros(slots, f32), presence_penalty=xp.zeros(slots, f32),
        key_data=xp.zeros((slots, 2), xp.uint32), step=xp.zeros(slots, i32),
        bias_ids=xp.full((slots, MAX_LOGIT_BIAS), vocab, i32),
        bias_values=xp.zeros((slots, MAX_LOGIT_BIAS), f32),
        prompt_seen=xp.zeros((slots, vocab), xp.bool_),
        counts=xp.zeros((slots, vocab), i32),
        adapter=xp.zeros(slots, i32),
        wants_top=xp.zeros(slots, xp.bool_),
    )


def host_row(vocab: int, sampling: SamplingParams | None = None, seed: int = 0,
             adapter: int = 0, top_logprobs: bool = False) -> SamplingRows:
    """One slot's sampling row for `insert`: a request's parameters, 64-bit seed, LoRA row and
    whether it wants top logprobs, built with numpy (sent with the call: an eager device op
    would be compiled at the first request, after warm-up). Its history fields are 1 wide
    (`insert` clears the slot's history instead); logit biases on ids >= vocab are dropped."""
    sampling = sampling or SamplingParams()
    bias_ids = np.full((1, MAX_LOGIT_BIAS), vocab, np.int32)
    bias_values = np.zeros((1, MAX_LOGIT_BIAS), np.float32)
    for j, (token, bias) in enumerate(sampling.logit_bias):
        if token < vocab:
            bias_ids[0, j], bias_values[0, j] = token, bias

    def f32(x: float) -> np.ndarray:
        return np.asarray([x], np.float32)

    host: dict[str, Any] = {
        "temperature": f32(sampling.temperature),
        "top_k": np.asarray([sampling.top_k], np.int32),
        "top_p": f32(sampling.top_p),
        "repetition_penalty": f32(sampling.effective_repetition_penalty),
        "frequency_penalty": f32(sampling.frequency_penalty),
        "presence_penalty": f32(sampling.presence_penalty),
        "key_data": np.asarray([[seed >> 32, seed & 0xFFFFFFFF]], np.uint32),
        "adapter": np.asarray([adapter], np.int32),
        "wants_top": np.asarray([top_logprobs]),
        "bias_ids": bias_ids, "bias_values": bias_values,
    }
    return dataclasses.replace(init_state(1, 1, xp=np), **host)


def insert(state: SamplingRows, slot: jax.Array, row: SamplingRows) -> SamplingRows:
    """Give slot `slot` a new request's parameters and an empty history.

    `row` holds one row of parameters ([1]-shaped fields; its history fields are ignored).
    """

    def put(field: jax.Array, value: jax.Array) -> jax.Array:
        return field.at[slot].set(value[0])

    return dataclasses.replace(
        state,
        temperature=put(state.temperature, row.temperature),
        top_k=put(state.top_k, row.top_k),
        top_p=put(state.top_p, row.top_p),
        repetition_penalty=put(state.repetition_penalty, row.repetition_penalty),
        frequency_penalty=put(state.frequency_penalty, row.frequency_penalty),
        presence_penalty=put(state.presence_penalty, row.presence_penalty),
        key_data=put(state.key_data, row.key_data),
        step=state.step.at[slot].set(0),
        bias_ids=put(state.bias_ids, row.bias_ids),
        bias_values=put(state.bias_values, row.bias_values),
        prompt_seen=state.prompt_seen.at[slot].set(False),
        counts=state.counts.at[slot].set(0),
        adapter=put(state.adapter, row.adapter),
        wants_top=put(state.wants_top, row.wants_top),
    )


def _gather(tree: SamplingRows, rows: jax.Array) -> SamplingRows:
    return jax.tree_util.tree_map(lambda a: a[rows], tree)


def _lora(stacks: tuple[LayerStacks, ...] | None, ids: jax.Array) -> LoraBatch | None:
    return None if stacks is None else LoraBatch(stacks, ids)


def prefill(
    params: Params, cache: KVCache, state: SamplingRows,
    lora: tuple[LayerStacks, ...] | None,
    slots: jax.Array,  # [P] slot of each row (padding rows: the slot count)
    tokens: jax.Array,  # [P, T]
    positions: jax.Array,  # [P, T], -1 for padding
    last: jax.Array,  # [P] index in T of each row's last real token
    final: jax.Array,  # [P] bool: this chunk ends the prompt, so a token is drawn
    cfg: GemmaConfig, vocab_limit: int,
) -> tuple[Sampled, jax.Array, KVCache, SamplingRows]:
    """Run prompt chunks for P slots; draw the first token of rows whose prompt is complete.

    Returns the draw, the last-position logits [P, V] (for `fork`), the cache and the state.
    """
    # The chunk goes straight into its slots' rows of the whole cache (in place; gathering
    # the rows and scattering them back made XLA copy the whole cache twice per prefill).
    logits, written = forward(params, tokens, positions, cache, cfg, logit_indices=last,
                              lora=_lora(lora, state.adapter[slots]), cache_rows=slots)
    assert written is not None
    cache = written
    vocab = state.prompt_seen.shape[1]
    seen_ids = jnp.where(positions >= 0, tokens, vocab)  # padding: out of range, dropped
    prompt_seen = state.prompt_seen.at[slots[:, None], seen_ids].set(True, mode="drop")
    state = dataclasses.replace(state, prompt_seen=prompt_seen)
    drawn = sample(logits, _gather(state, slots), vocab_limit)
    return drawn, logits, cache, state  # the drawn token is recorded when decode is fed it


def fork(
    cache: KVCache, state: SamplingRows,
    source: jax.Array,  # [] the slot whose prompt was just prefilled
    targets: jax.Array,  # [M] slots of the other choices (padding: the slot count)
    logits: jax.Array,  # [V] the prompt's last-position logits
    vocab_limit: int,
) -> tuple[Sampled, KVCache, SamplingRows]:
    """n > 1: copy one prefilled prompt to more slots and draw each one's first token."""
    cache = KVCache(
        keys=tuple(k.at[targets].set(k[source], mode="drop") for k in cache.keys),
        values=tuple(v.at[targets].set(v[source], mode="drop") for v in cache.values),
    )
    prompt_seen = state.prompt_seen.at[targets].set(state.prompt_seen[source], mode="drop")
    state = dataclasses.replace(state, prompt_seen=prompt_seen)
    m = targets.shape[0]
    drawn = sample(jnp.broadcast_to(logits, (m, logits.shape[-1])), _gather(state, targets),
                   vocab_limit)
    return drawn, cache, state


def decode(
    params: Params, cache: KVCache, state: SamplingRows,
    lora: tuple[LayerStacks, ...] | None,
    tokens: jax.Array,  # [S] each slot's last token
    positions: jax.Array,  # [S] its position; -1 for an inactive slot
    cfg: GemmaConfig, vocab_limit: int, attend_len: int | None = None,
) -> tuple[Sampled, KVCache, SamplingRows]:
    """One token for each of the first n slots (n = len(tokens), the active ones among the
    leading slots; the scheduler fills low slots first), all positions below `attend_len`."""
    n = tokens.shape[0]
    active = positions >= 0
    # The token fed in is the one each row drew last: count it first, then read. Written
    # before it is read, the history is updated in place; counted after the draw (read, then
    # written), XLA copied it twice a step.
    state = record(state, jnp.arange(n), tokens, active)
    rows = jax.tree_util.tree_map(lambda a: a[:n], state)
    logits, new_cache = forward(params, tokens[:, None], positions[:, None], cache, cfg,
                                logit_indices=jnp.zeros_like(tokens),
                                lora=_lora(lora, rows.adapter), attend_len=attend_len)
    assert new_cache is not None
    drawn = sample(logits, rows, vocab_limit)
    return drawn, new_cache, state


def decode_block(
    params: Params, cache: KVCache, state: SamplingRows,
    lora: tuple[LayerStacks, ...] | None,
    tokens: jax.Array,  # [S] each slot's last token
    positions: jax.Array,  # [S] its position; -1 for an inactive slot
    budgets: jax.Array,  # [S] how many of the steps each slot runs (0 for an inactive one)
    count: jax.Array,  # [] steps to run, 1 <= count <= max_steps (at least every budget)
    cfg: GemmaConfig, vocab_limit: int, max_steps: int, attend_len: int | None = None,
) -> tuple[Sampled, jax.Array, KVCache, SamplingRows]:
    """Up to `max_steps` decode steps in one call, each fed the tokens the previous one drew.

    Why: every call costs the host a dispatch, a read-back and a hand-out of tokens, and on a
    CPU that host work runs on the cores the step needs. A slot runs its first `budgets[s]`
    steps and sits out the rest (its requests' token limit falls inside the block); stop
    tokens are the host's business: it drops what a slot drew after one.

    Returns the draws stacked [max_steps, S, ...] (rows past `count` are zeros), the tokens the
    last step drew (to feed the next call), the cache and the state.
    """
    rows = tokens.shape[0]
    out = Sampled(
        tokens=jnp.zeros((max_steps, rows), jnp.int32),
        logprob=jnp.zeros((max_steps, rows), jnp.float32),
        top_ids=jnp.zeros((max_steps, rows, MAX_TOP_LOGPROBS), jnp.int32),
        top_logprobs=jnp.zeros((max_steps, rows, MAX_TOP_LOGPROBS), jnp.float32),
    )

    def step(i: jax.Array, carry: tuple[KVCache, SamplingRows, jax.Array, Sampled]
             ) -> tuple[KVCache, SamplingRows, jax.Array, Sampled]:
        cache, state, fed, out = carry
        at = jnp.where((positions >= 0) & (i < budgets), positions + i, -1)
        drawn, cache, state = decode(params, cache, state, lora, fed, at, cfg, vocab_limit,
                                     attend_len)
        out = jax.tree_util.tree_map(lambda o, d: o.at[i].set(d.astype(o.dtype)), out, drawn)
        return cache, state, drawn.tokens, out

    cache, state, last, out = jax.lax.fori_loop(0, count, step, (cache, state, tokens, out))
    return out, last, cache, state
