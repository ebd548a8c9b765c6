"""`forward(params, tokens, positions, cache, cfg) -> (logits, cache)`: the Gemma decoder.

A pure function. The same code serves a whole prompt (prefill, T tokens per row), a chunk of a
long prompt, and one new token per sequence (decode, T = 1): each row's tokens are written into
the cache at their absolute positions, and each query attends to the row's earlier cache entries
plus the causal part of its own chunk. Positions < 0 mark padding: never written, never seen.
With `cache=None` the pass attends within the chunk only (a stateless full forward).

Shapes: B rows, T tokens per row, S cache entries, D model dim, V vocab, H heads, K kv heads,
G = H / K queries per kv head, Hd head dim.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from gemma_server.kernels import cpu_attention
from gemma_server.model import cache as kv
from gemma_server.model.cache import KVCache
from gemma_server.model.config import GemmaConfig
from gemma_server.model.layers import (
    F32,
    dense,
    gelu_tanh,
    project,
    rms_norm,
    rope,
    soft_cap,
)
from gemma_server.model.lora import LayerStacks, LoraBatch, lora_delta
from gemma_server.model.params import FUSED, Params, compute_dtype, fused_sizes
from gemma_server.model.quantize import embed_rows

_MASKED = -1e30  # finite: a query that sees nothing (padding) gets a uniform, not NaN, softmax


def forward(
    params: Params,
    tokens: jax.Array,  # [B, T] int
    positions: jax.Array,  # [B, T] int, -1 for padding
    cache: KVCache | None,
    cfg: GemmaConfig,
    logit_indices: jax.Array | None = None,  # [B] int: only this token of each row
    lora: LoraBatch | None = None,  # per-row LoRA adapters (stacks + row ids)
    attend_len: int | None = None,  # static: every position of this call is below it
    cache_rows: jax.Array | None = None,  # [B] the cache row of each token row (see below)
) -> tuple[jax.Array, KVCache | None]:
    """Logits in float32 and the cache with this chunk written.

    With `attend_len`, decode reads only the first `attend_len` cache entries: a short
    conversation then costs attention over its own length, not over `max_len`.

    Logits are [B, T, V] for every token, or [B, V] for one token per row when
    `logit_indices` is given: a prefill needs only its last position, and the output head
    over a large vocabulary would otherwise dominate its cost.

    Token row b uses cache row `cache_rows[b]` (default: row b); a row index past the cache
    (engine padding) writes nothing. The engine passes its whole slot cache and the slots of
    a prefill's prompts, so the chunk is written in place, never through a copy of the cache.
    """
    dtype = compute_dtype(params)
    positions = positions.astype(jnp.int32)
    x = embed_rows(params["embed"], tokens, dtype) * jnp.asarray(cfg.embed_normalizer, dtype)
    # (the normalizer is rounded to dtype first, as HF does)
    new_keys: list[jax.Array] = []
    new_values: list[jax.Array] = []
    for i, lp in enumerate(params["layers"]):
        layer_cache = None if cache is None else (cache.keys[i], cache.values[i])
        proj = _projector(lp, cfg, None if lora is None else (lora.stacks[i], lora.ids))
        attn, written = _attention_block(proj, lp, rms_norm(x, lp["attn_norm"], cfg.rms_norm_eps),
                                         positions, layer_cache, cfg, i, attend_len, cache_rows)
        if written is not None:
            new_keys.append(written[0])
            new_values.append(written[1])
        if cfg.use_post_norms:
            attn = rms_norm(attn, lp["post_attn_norm"], cfg.rms_norm_eps)
        x = x + attn
        h = rms_norm(x, lp["ffw_norm"], cfg.rms_norm_eps)
        gate, up = proj("gate_up", h)
        h = proj("down", gelu_tanh(gate) * up)[0]  # GeGLU
        if cfg.use_post_norms:
            h = rms_norm(h, lp["post_ffw_norm"], cfg.rms_norm_eps)
        x = x + h
    if logit_indices is not None:
        x = jnp.take_along_axis(x, logit_indices[:, None, None].astype(jnp.int32), axis=1)
    x = rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
    logits = _head(params, x)
    if logit_indices is not None:
        logits = logits[:, 0]
    logits = soft_cap(logits, cfg.final_logit_softcap)
    new_cache = None if cache is None else KVCache(keys=tuple(new_keys), values=tuple(new_values))
    return logits, new_cache


def _head(params: Params, x: jax.Array) -> jax.Array:
    """Output projection: the tied embedding (not scaled by the normalizer) or a separate head."""
    return project(x, params["lm_head"] if "lm_head" in params else params["embed"])


Projector = Callable[[str, jax.Array], list[jax.Array]]


def _projector(lp: Params, cfg: GemmaConfig,
               lora: tuple[LayerStacks, jax.Array] | None) -> Projector:
    """`proj(name, x)`: the outputs of the layer's projection `name` (one, or each part of a
    fused one: `qkv`, `gate_up`), each plus its row's LoRA delta if any."""

    def proj(name: str, x: jax.Array) -> list[jax.Array]:
        parts = FUSED.get(name, (name,))
        if name not in lp:  # unfused (tensor-parallel layout, sharding.py): one per part
            outs = [dense(x, lp[part]) for part in parts]
        elif len(parts) == 1:
            outs = [dense(x, lp[name])]
        else:
            outs = jnp.split(dense(x, lp[name]),
                             list(itertools.accumulate(fused_sizes(cfg, name)))[:-1], axis=-1)
        if lora is not None:
            outs = [out + lora_delta(x, lora[0][part], lora[1])
                    for out, part in zip(outs, parts, strict=True)]
        return outs

    return proj


def _attention_block(
    proj: Projector,
    lp: Params,
    x: jax.Array,  # [B, T, D], already normalised
    positions: jax.Array,
    layer_cache: tuple[jax.Array, jax.Array] | None,
    cfg: GemmaConfig,
    layer: int,
    attend_len: int | None,
    cache_rows: jax.Array | None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    b, t, _ = x.shape
    hd, k_heads = cfg.head_dim, cfg.num_kv_heads
    q, k, v = proj("qkv", x)
    q = q.reshape(b, t, cfg.num_heads, hd)
    k, v = k.reshape(b, t, k_heads, hd), v.reshape(b, t, k_heads, hd)
    if cfg.use_qk_norm:  # Gemma 3 normalises q and k per head, before RoPE
        q = rms_norm(q, lp["q_norm"], cfg.rms_norm_eps)
        k = rms_norm(k, lp["k_norm"], cfg.rms_norm_eps)
    theta, scale = cfg.rope_for_layer(layer)
    q, k = rope(q, positions, theta, scale), rope(k, positions, theta, scale)
    window = cfg.sliding_window if cfg.layer_types[layer] == "sliding" else None

    # Query head h reads kv head h // G: group the queries as [K, G]. Keys and values are
    # laid out [B, K, T, Hd] like the cache.
    qg = q.reshape(b, t, k_heads, cfg.queries_per_kv, hd).transpose(0, 2, 3, 1, 4)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    if layer_cache is None:
        return _output(proj, _attend(qg, [(k, v, positions)], positions, window, cfg), x), None
    size = layer_cache[0].shape[2]

    def write() -> tuple[jax.Array, jax.Array]:
        return (kv.write(layer_cache[0], k, positions, cache_rows),
                kv.write(layer_cache[1], v, positions, cache_rows))

    def rows(entries: jax.Array) -> jax.Array:  # this call's rows of the cache
        return kv.read(entries[:b] if cache_rows is None else entries[cache_rows])

    if window is None or size < window or size >= window + t - 1:
        # Write first, then attend from the cache alone: XLA:CPU updates the cache in place
        # only when nothing reads the old entries before the write (read first, it copied
        # every cache array, twice per prefill). The cache then still holds every entry the
        # queries need: a global layer keeps all positions, and a sliding layer's ring either
        # never wraps (shorter than the window) or has room for the window behind the first
        # query plus the chunk -- always so for one token (decode), whose write replaces an
        # entry it cannot see.
        written = write()
        # Entries at or past attend_len are empty (positions are below it), unless this is a
        # ring buffer no longer than attend_len, which is read whole.
        n = size if attend_len is None else min(size, attend_len)
        if t == 1 and cache_rows is None and cpu_attention.wanted(cfg.queries_per_kv,
                                                                  written[0].dtype):
            # Decode straight out of the cache, in place (kernels/cpu_attention.py).
            out = cpu_attention.decode_attention(
                qg[:, :, :, 0], written[0], written[1], positions[:, 0], n, cfg.attn_scale,
                cfg.attn_logit_softcap, window)[:, :, :, None]
            return _output(proj, out, x), written
        last = jnp.max(positions, axis=1)  # -1 for a padding row: it then sees nothing
        held = kv.entry_positions(last + 1, size)[:, :n]
        parts = [(rows(written[0])[:, :, :n], rows(written[1])[:, :, :n], held)]
    else:
        # A prefill chunk the sliding ring would wrap over: earlier cache entries plus the
        # chunk itself, then write the chunk (written first, it would overwrite keys its own
        # first queries still need). XLA copies this layer's cache for it.
        held = kv.entry_positions(kv.row_starts(positions), size)
        parts = [(rows(layer_cache[0]), rows(layer_cache[1]), held), (k, v, positions)]
        written = write()
    return _output(proj, _attend(qg, parts, positions, window, cfg), x), written


def _output(proj: Projector, out: jax.Array, x: jax.Array) -> jax.Array:
    """The attention output [B, K, G, T, Hd] (float32) through the `o` projection."""
    b, k, g, t, hd = out.shape
    return proj("o", out.astype(x.dtype).transpose(0, 3, 1, 2, 4).reshape(b, t, k * g * hd))[0]


QUERY_BLOCK = 256  # prefill queries attended per block (bounds the score matrix's memory)
KEY_BLOCK = 256  # cache entries attended per step of the key loop (see _attend_key_blocks)


def _attend(
    qg: jax.Array,  # [B, K, G, T, Hd]
    parts: list[tuple[jax.Array, jax.Array, jax.Array]],  # keys, values [B, K, S, Hd]; pos [B, S]
    positions: jax.Array,  # [B, T] of the queries
    window: int | None,
    cfg: GemmaConfig,
) -> jax.Array:
    """Softmax attention over the concatenated key sets, masked by absolute position.

    A long prefill chunk attends in blocks of QUERY_BLOCK queries, one after the other: the
    scores of a 1536-token chunk against a 2048-entry cache would otherwise take ~0.2 GB per
    layer (several copies in flight), for no gain in speed. On CPU, a single key set (the
    cache, written first) is read in blocks of KEY_BLOCK entries, skipping those no query of
    the block can see (_attend_key_blocks).
    """
    if _key_blocks_apply(parts):
        keys, values, held = parts[0]

        def attend(q: jax.Array, pos: jax.Array) -> jax.Array:
            return _attend_key_blocks(q, keys, values, held, pos, window, cfg)
    else:
        def attend(q: jax.Array, pos: jax.Array) -> jax.Array:
            return _attend_block(q, parts, pos, window, cfg)

    t = qg.shape[3]
    if t <= QUERY_BLOCK or t % QUERY_BLOCK:
        return attend(qg, positions)
    blocks = t // QUERY_BLOCK
    q_blocks = jnp.moveaxis(qg.reshape(*qg.shape[:3], blocks, QUERY_BLOCK, qg.shape[-1]), 3, 0)
    p_blocks = jnp.moveaxis(positions.reshape(positions.shape[0], blocks, QUERY_BLOCK), 1, 0)
    out = jax.lax.map(lambda qp: attend(qp[0], qp[1]), (q_blocks, p_blocks))
    # [blocks, B, K, G, QUERY_BLOCK, Hd]
    return jnp.moveaxis(out, 0, 3).reshape(qg.shape)


def _key_blocks_apply(parts: list[tuple[jax.Array, jax.Array, jax.Array]]) -> bool:
    """Whether to read the keys block by block: one key set of several whole blocks, on CPU.

    The skip is a run-time branch (`lax.cond`); XLA:GPU evaluates a branch's predicate on the
    host, a device sync per block, so accelerators keep the one-pass softmax.
    """
    size = parts[0][0].shape[2]
    return (len(parts) == 1 and size > KEY_BLOCK and size % KEY_BLOCK == 0
            and jax.default_backend() == "cpu")


def _attend_key_blocks(
    qg: jax.Array,  # [B, K, G, T, Hd]
    keys: jax.Array,  # [B, K, S, Hd]
    values: jax.Array,  # [B, K, S, Hd]
    held: jax.Array,  # [B, S]: the position each entry holds (negative: empty)
    positions: jax.Array,  # [B, T]
    window: int | None,
    cfg: GemmaConfig,
) -> jax.Array:
    """`_attend_block` over the keys in blocks of KEY_BLOCK entries with a running softmax
    (maximum, sum and weighted values rescaled as each block arrives, as flash attention does),
    skipping every block in which no query sees any entry.

    A prefill chunk sees only the entries before its own end: the first 1024-token chunk of a
    prompt read all 2048 entries of bench-150m's cache, and a 256-query block of it
    (causal) needs at most its own and earlier blocks. Attention was 40% of a 1536-token
    prefill (2.41 s, 1.45 s with attention left out).
    A query that sees no entry at all (padding) gets the mean of the values of the blocks read,
    not NaN; nothing reads its output.
    """
    b, k, g, t, _ = qg.shape
    blocks = keys.shape[2] // KEY_BLOCK

    def step(i: jax.Array, carry: tuple[jax.Array, jax.Array, jax.Array]
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
        start = i * KEY_BLOCK
        block_pos = jax.lax.dynamic_slice_in_dim(held, start, KEY_BLOCK, axis=1)
        visible = _visible(positions[:, :, None], block_pos[:, None, :], window)  # [B, T, KB]

        def add(carry: tuple[jax.Array, jax.Array, jax.Array]
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
            top, total, acc = carry
            block_keys = jax.lax.dynamic_slice_in_dim(keys, start, KEY_BLOCK, axis=2)
            block_values = jax.lax.dynamic_slice_in_dim(values, start, KEY_BLOCK, axis=2)
            s = jnp.where(visible[:, None, None], _scores(qg, block_keys, cfg), _MASKED)
            new_top = jnp.maximum(top, jnp.max(s, axis=-1))
            weights = jnp.exp(s - new_top[..., None])
            rescale = jnp.exp(top - new_top)
            acc = acc * rescale[..., None] + _weighted_values(weights, block_values)
            return new_top, total * rescale + jnp.sum(weights, axis=-1), acc

        return jax.lax.cond(jnp.any(visible), add, lambda c: c, carry)

    init = (jnp.full((b, k, g, t), -jnp.inf, F32), jnp.zeros((b, k, g, t), F32),
            jnp.zeros(qg.shape, F32))
    _, total, acc = jax.lax.fori_loop(0, blocks, step, init)
    return acc / jnp.where(total > 0, total, 1.0)[..., None]


def _attend_block(
    qg: jax.Array,
    parts: list[tuple[jax.Array, jax.Array, jax.Array]],
    positions: jax.Array,
    window: int | None,
    cfg: GemmaConfig,
) -> jax.Array:
    scores = [_scores(qg, keys, cfg) for keys, _, _ in parts]
    masks = [_visible(positions[:, :, None], pos[:, None, :], window) for _, _, pos in parts]
    s = jnp.concatenate(scores, axis=-1)  # [B, K, G, T, sum S]
    s = jnp.where(jnp.concatenate(masks, axis=-1)[:, None, None], s, _MASKED)
    probs = jax.nn.softmax(s, axis=-1)
    out = jnp.zeros(qg.shape, F32)
    offset = 0
    for _, values, _ in parts:
        n = values.shape[2]
        out = out + _weighted_values(probs[..., offset : offset + n], values)
        offset += n
    return out


def _scores(qg: jax.Array, keys: jax.Array, cfg: GemmaConfig) -> jax.Array:
    """[B, K, G, T, Hd] x [B, K, S, Hd] -> [B, K, G, T, S] in float32, scaled and soft-capped
    (before any mask, as the references do)."""
    s = jnp.einsum("bkgtd,bksd->bkgts", qg, keys, preferred_element_type=F32)
    return soft_cap(s * cfg.attn_scale, cfg.attn_logit_softcap)


def _weighted_values(weights: jax.Array, values: jax.Array) -> jax.Array:
    """[B, K, G, T, S] x [B, K, S, Hd] -> [B, K, G, T, Hd] in float32, the weights rounded to
    the values' dtype first (as the references' bfloat16 matmul)."""
    return jnp.einsum("bkgts,bksd->bkgtd", weights.astype(values.dtype), values,
                      preferred_element_type=F32)


def _visible(query_pos: jax.Array, key_pos: jax.Array, window: int | None) -> jax.Array:
    """Key j is visible to query i iff 0 <= j <= i and, on sliding layers, j > i - window."""
    ok = (key_pos >= 0) & (key_pos <= query_pos)
    if window is not None:
        ok = ok & (key_pos > query_pos - window)
    return ok
