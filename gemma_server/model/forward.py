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

import jax
import jax.numpy as jnp

from gemma_server.model import cache as kv
from gemma_server.model.cache import KVCache
from gemma_server.model.config import GemmaConfig
from gemma_server.model.layers import F32, dense, mlp, rms_norm, rope, soft_cap
from gemma_server.model.params import Params

_MASKED = -1e30  # finite: a query that sees nothing (padding) gets a uniform, not NaN, softmax


def forward(
    params: Params,
    tokens: jax.Array,  # [B, T] int
    positions: jax.Array,  # [B, T] int, -1 for padding
    cache: KVCache | None,
    cfg: GemmaConfig,
    logit_indices: jax.Array | None = None,  # [B] int: only this token of each row
) -> tuple[jax.Array, KVCache | None]:
    """Logits in float32 and the cache with this chunk written.

    Logits are [B, T, V] for every token, or [B, V] for one token per row when
    `logit_indices` is given: a prefill needs only its last position, and the output head
    over a large vocabulary would otherwise dominate its cost.
    """
    embed = params["embed"]
    dtype = embed.dtype
    positions = positions.astype(jnp.int32)
    x = embed[tokens] * jnp.asarray(cfg.embed_normalizer, dtype)  # rounded to dtype, as HF
    new_keys: list[jax.Array] = []
    new_values: list[jax.Array] = []
    for i, lp in enumerate(params["layers"]):
        layer_cache = None if cache is None else (cache.keys[i], cache.values[i])
        attn, written = _attention_block(lp, rms_norm(x, lp["attn_norm"], cfg.rms_norm_eps),
                                         positions, layer_cache, cfg, i)
        if written is not None:
            new_keys.append(written[0])
            new_values.append(written[1])
        if cfg.use_post_norms:
            attn = rms_norm(attn, lp["post_attn_norm"], cfg.rms_norm_eps)
        x = x + attn
        h = mlp(rms_norm(x, lp["ffw_norm"], cfg.rms_norm_eps), lp["gate"], lp["up"], lp["down"])
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
    if "lm_head" in params:
        return jnp.matmul(x, params["lm_head"], preferred_element_type=F32)
    return jnp.einsum("btd,vd->btv", x, params["embed"], preferred_element_type=F32)


def _attention_block(
    lp: Params,
    x: jax.Array,  # [B, T, D], already normalised
    positions: jax.Array,
    layer_cache: tuple[jax.Array, jax.Array] | None,
    cfg: GemmaConfig,
    layer: int,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    b, t, _ = x.shape
    hd, k_heads = cfg.head_dim, cfg.num_kv_heads
    q = dense(x, lp["q"]).reshape(b, t, cfg.num_heads, hd)
    k = dense(x, lp["k"]).reshape(b, t, k_heads, hd)
    v = dense(x, lp["v"]).reshape(b, t, k_heads, hd)
    if cfg.use_qk_norm:  # Gemma 3 normalises q and k per head, before RoPE
        q = rms_norm(q, lp["q_norm"], cfg.rms_norm_eps)
        k = rms_norm(k, lp["k_norm"], cfg.rms_norm_eps)
    theta, scale = cfg.rope_for_layer(layer)
    q, k = rope(q, positions, theta, scale), rope(k, positions, theta, scale)
    window = cfg.sliding_window if cfg.layer_types[layer] == "sliding" else None

    # Query head h reads kv head h // G: group the queries as [K, G].
    qg = q.reshape(b, t, k_heads, cfg.queries_per_kv, hd)
    scores = [_scores(qg, k)]
    masks = [_visible(positions[:, :, None], positions[:, None, :], window)]
    values = [v]
    if layer_cache is not None:
        cache_k, cache_v = layer_cache
        held = kv.entry_positions(kv.row_starts(positions), cache_k.shape[1])  # [B, S]
        scores.insert(0, _scores(qg, cache_k))
        masks.insert(0, _visible(positions[:, :, None], held[:, None, :], window))
        values.insert(0, cache_v)
    s = jnp.concatenate(scores, axis=-1) * cfg.attn_scale  # [B, K, G, T, S+T]
    s = soft_cap(s, cfg.attn_logit_softcap)  # before the mask, as the references do
    s = jnp.where(jnp.concatenate(masks, axis=-1)[:, None, None], s, _MASKED)
    probs = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    out = jnp.zeros((b, t, k_heads, cfg.queries_per_kv, hd), F32)
    offset = 0
    for part in values:
        n = part.shape[1]
        p = probs[..., offset : offset + n]
        out = out + jnp.einsum("bkgts,bskd->btkgd", p, part, preferred_element_type=F32)
        offset += n
    out = out.astype(x.dtype).reshape(b, t, cfg.num_heads * hd)
    written = None
    if layer_cache is not None:
        written = (kv.write(layer_cache[0], k, positions), kv.write(layer_cache[1], v, positions))
    return dense(out, lp["o"]), written


def _scores(qg: jax.Array, keys: jax.Array) -> jax.Array:
    """[B, T, K, G, Hd] x [B, S, K, Hd] -> [B, K, G, T, S] in float32."""
    return jnp.einsum("btkgd,bskd->bkgts", qg, keys, preferred_element_type=F32)


def _visible(query_pos: jax.Array, key_pos: jax.Array, window: int | None) -> jax.Array:
    """Key j is visible to query i iff 0 <= j <= i and, on sliding layers, j > i - window."""
    ok = (key_pos >= 0) & (key_pos <= query_pos)
    if window is not None:
        ok = ok & (key_pos > query_pos - window)
    return ok
