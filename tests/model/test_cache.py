"""Prefill + decode through the KV cache must give the logits of one full forward pass."""

from __future__ import annotations

import dataclasses
import importlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemma_server.engine import steps
from gemma_server.engine.executor import forward_step, full_forward
from gemma_server.model.cache import cache_bytes, entry_positions, init_cache
from gemma_server.model.forward import forward
from tests.conftest import ARCHS, golden

TOLERANCE = 1e-4


def _prompt(name: str) -> list[int]:
    return golden(name)["ids_0"].tolist()[:40]  # 5x the sliding window


def _full_logits(model, ids: list[int]) -> np.ndarray:
    tokens = jnp.asarray(ids)[None]
    return np.asarray(full_forward(model.params, tokens, jnp.arange(len(ids))[None],
                                   model.config))[0]


def _run_chunks(model, ids: list[int], chunk_sizes: list[int], max_len: int = 64,
                cache=None) -> np.ndarray:
    if cache is None:
        cache = init_cache(model.config, 1, max_len, jnp.float32)
    out, start = [], 0
    for size in chunk_sizes:
        tokens = jnp.asarray(ids[start:start + size])[None]
        positions = jnp.arange(start, start + size)[None]
        logits, cache = forward_step(model.params, tokens, positions, cache, model.config)
        out.append(np.asarray(logits)[0])
        start += size
    assert start == len(ids)
    return np.concatenate(out)


@pytest.mark.parametrize("name", ARCHS)
def test_prefill_then_token_by_token_decode_equals_full_forward(name, tiny_model):
    model, ids = tiny_model(name), _prompt(name)
    cached = _run_chunks(model, ids, [12] + [1] * (len(ids) - 12))
    np.testing.assert_allclose(cached, _full_logits(model, ids), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", ARCHS)
def test_chunked_prefill_longer_than_the_window_equals_full_forward(name, tiny_model):
    """Chunks of 11 > window 8 overwrite the ring buffer within one step."""
    model, ids = tiny_model(name), _prompt(name)
    cached = _run_chunks(model, ids, [11, 11, 11, 7])
    np.testing.assert_allclose(cached, _full_logits(model, ids), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", ARCHS)
def test_rows_of_a_batch_are_independent_of_padding_and_neighbours(name, tiny_model):
    model = tiny_model(name)
    long_ids, short_ids = _prompt(name), _prompt(name)[5:22]
    pad = len(long_ids) - len(short_ids)
    tokens = jnp.asarray([long_ids, short_ids + [0] * pad])
    positions = jnp.asarray([list(range(len(long_ids))),
                             list(range(len(short_ids))) + [-1] * pad])
    cache = init_cache(model.config, 2, 64, jnp.float32)
    logits, cache = forward_step(model.params, tokens, positions, cache, model.config)
    np.testing.assert_allclose(np.asarray(logits)[0], _full_logits(model, long_ids),
                               atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(np.asarray(logits)[1, :len(short_ids)],
                               _full_logits(model, short_ids), atol=TOLERANCE, rtol=0)
    # One decode step for both rows at their own positions.
    nxt = jnp.asarray([[7], [9]])
    step, _ = forward_step(model.params, nxt, jnp.asarray([[len(long_ids)], [len(short_ids)]]),
                           cache, model.config)
    np.testing.assert_allclose(np.asarray(step)[1, 0], _full_logits(model, short_ids + [9])[-1],
                               atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(np.asarray(step)[0, 0], _full_logits(model, long_ids + [7])[-1],
                               atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", ARCHS)
def test_a_reused_row_never_sees_its_previous_occupant(name, tiny_model):
    model = tiny_model(name)
    first, second = _prompt(name), _prompt(name)[3:13]
    cache = init_cache(model.config, 1, 64, jnp.float32)
    _, cache = forward_step(model.params, jnp.asarray(first)[None],
                            jnp.arange(len(first))[None], cache, model.config)
    got = _run_chunks_on(model, cache, second)
    np.testing.assert_allclose(got, _full_logits(model, second), atol=TOLERANCE, rtol=0)


def _run_chunks_on(model, cache, ids: list[int]) -> np.ndarray:
    logits, cache = forward_step(model.params, jnp.asarray(ids[:4])[None],
                                 jnp.arange(4)[None], cache, model.config)
    out = [np.asarray(logits)[0]]
    for p in range(4, len(ids)):
        logits, cache = forward_step(model.params, jnp.asarray([[ids[p]]]),
                                     jnp.asarray([[p]]), cache, model.config)
        out.append(np.asarray(logits)[0])
    return np.concatenate(out)


def test_ring_buffer_entry_positions():
    # Ring of 4: after 6 tokens (next position 6), entries hold positions 4, 5, 2, 3.
    held = entry_positions(jnp.asarray([6, 2, 0]), 4)
    assert held.tolist() == [[4, 5, 2, 3], [0, 1, -2, -1], [-4, -3, -2, -1]]


def test_forward_is_pure(tiny_model):
    model = tiny_model("tiny-gemma3")
    ids = _prompt("tiny-gemma3")
    np.testing.assert_array_equal(_full_logits(model, ids), _full_logits(model, ids))


@pytest.mark.parametrize("name", ARCHS)
def test_decode_reading_a_cache_prefix_equals_reading_all_of_it(name, tiny_model):
    """attend_len: a decode step reads only the entries that can hold positions."""
    import jax

    model = tiny_model(name)
    ids = _prompt(name)[:20]
    cache = init_cache(model.config, 1, 64, jnp.float32)
    _, cache = forward_step(model.params, jnp.asarray(ids)[None], jnp.arange(20)[None], cache,
                            model.config)
    step = jax.jit(forward, static_argnames=("cfg", "attend_len"))
    token, position = jnp.asarray([[ids[-1]]]), jnp.asarray([[20]])
    full, _ = step(model.params, token, position, cache, model.config)
    short, _ = step(model.params, token, position, cache, model.config, attend_len=32)
    np.testing.assert_allclose(np.asarray(short), np.asarray(full), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ARCHS)
def test_attention_in_query_blocks_equals_attention_at_once(name, tiny_model, monkeypatch):
    """Long prefill chunks attend in blocks of queries (memory); blocks of 8 here, so the
    40-token full forward and the 16-token chunks after a cached prefix are all blocked."""
    forward_module = importlib.import_module("gemma_server.model.forward")
    model, ids = tiny_model(name), _prompt(name)
    reference = _full_logits(model, ids)
    monkeypatch.setattr(forward_module, "QUERY_BLOCK", 8)
    jax.clear_caches()  # retrace: the compiled forward passes saw the old block size
    np.testing.assert_allclose(_full_logits(model, ids), reference, atol=TOLERANCE, rtol=0)
    cached = _run_chunks(model, ids, [8, 16, 16])
    np.testing.assert_allclose(cached, reference, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", ["tiny-gemma2", "tiny-gemma3"])
def test_a_sliding_ring_with_room_for_window_and_chunk_is_written_before_it_is_read(
        name, tiny_model):
    """Rings of window + chunk - 1 entries take the write-first prefill path (the one that
    updates the cache in place): chunks of 11 over a window of 8 in a ring of 18."""
    model, ids = tiny_model(name), _prompt(name)
    cfg = model.config
    assert cfg.sliding_window == 8
    cache = init_cache(cfg, 1, 64, jnp.float32)
    sliding = [i for i, kind in enumerate(cfg.layer_types) if kind == "sliding"]
    assert sliding

    def ring(layer: int, a: jax.Array) -> jax.Array:
        return jnp.zeros((*a.shape[:2], 8 + 11 - 1, a.shape[3]), a.dtype) \
            if layer in sliding else a

    cache = dataclasses.replace(
        cache, keys=tuple(ring(i, a) for i, a in enumerate(cache.keys)),
        values=tuple(ring(i, a) for i, a in enumerate(cache.values)))
    cached = _run_chunks(model, ids, [11, 11, 11, 7], cache=cache)
    np.testing.assert_allclose(cached, _full_logits(model, ids), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", ARCHS)
def test_cache_rows_pick_each_token_rows_cache_row_and_padding_rows_write_nothing(
        name, tiny_model):
    """The engine prefills prompts into their slots of the whole cache (`cache_rows`); a
    row index past the cache is padding."""
    model, ids = tiny_model(name), _prompt(name)[:20]
    cfg = model.config
    cache = init_cache(cfg, 3, 64, jnp.float32)
    tokens = jnp.asarray([ids, ids])
    positions = jnp.asarray([list(range(20)), [-1] * 20])
    step = jax.jit(forward, static_argnames="cfg")
    logits, written = step(model.params, tokens, positions, cache, cfg,
                           logit_indices=jnp.asarray([19, 0]), cache_rows=jnp.asarray([2, 3]))
    np.testing.assert_allclose(np.asarray(logits)[0], _full_logits(model, ids)[-1],
                               atol=TOLERANCE, rtol=0)
    for before, after in zip(cache.keys + cache.values, written.keys + written.values,
                             strict=True):
        np.testing.assert_array_equal(np.asarray(after)[:2], np.asarray(before)[:2])
        assert np.abs(np.asarray(after)[2]).sum() > 0
    # Slot 2 then decodes on from its prompt like a sequence that had row 0 to itself.
    nxt, pos = jnp.asarray([[0], [0], [7]]), jnp.asarray([[-1], [-1], [20]])
    step_logits, _ = forward_step(model.params, nxt, pos, written, cfg)
    np.testing.assert_allclose(np.asarray(step_logits)[2, 0],
                               _full_logits(model, ids + [7])[-1], atol=TOLERANCE, rtol=0)


def test_a_prefill_step_updates_the_slot_cache_in_place(tiny_model):
    """XLA's temporaries for a prefill are far smaller than the cache: no copy of it is made
    (reading a slot's rows and writing them back had cost two whole copies per prefill)."""
    model = tiny_model("tiny-gemma")
    cfg = model.config
    cache = init_cache(cfg, 8, 1024, jnp.float32)
    state = steps.init_state(8, cfg.vocab_size)
    i32 = jnp.int32

    def spec(shape, dtype=i32):
        return jax.ShapeDtypeStruct(shape, dtype)

    prefill = jax.jit(partial(steps.prefill, cfg=cfg, vocab_limit=cfg.vocab_size),
                      donate_argnames=("cache", "state"))
    compiled = prefill.lower(model.params, cache, state, None, spec((1,)), spec((1, 16)),
                             spec((1, 16)), spec((1,)), spec((1,), jnp.bool_)).compile()
    temporaries = compiled.memory_analysis().temp_size_in_bytes
    # What remains is mostly the prompt's own slot, read for its attention (1/8 of the cache).
    assert temporaries < cache_bytes(cfg, 8, 1024, jnp.float32) / 4


@pytest.mark.parametrize("name", ARCHS)
def test_attention_in_key_blocks_equals_attention_at_once(name, tiny_model, monkeypatch):
    """On CPU, attention reads a key set of several whole blocks block by block with a running
    softmax, skipping blocks no query sees; key blocks of 8 here over the 40-token full forward
    and a 64-entry cache (global layers; the window-8 rings are a single block), inside query
    blocks of 8 (chunks of 8 and 16) and without them (chunks of 11, 12, 28)."""
    forward_module = importlib.import_module("gemma_server.model.forward")
    model, ids = tiny_model(name), _prompt(name)
    reference = _full_logits(model, ids)
    monkeypatch.setattr(forward_module, "KEY_BLOCK", 8)
    monkeypatch.setattr(forward_module, "QUERY_BLOCK", 8)
    jax.clear_caches()
    np.testing.assert_allclose(_full_logits(model, ids), reference, atol=TOLERANCE, rtol=0)
    for chunks in ([12, 28], [8, 16, 16], [11, 11, 11, 7]):
        cached = _run_chunks(model, ids, chunks)
        np.testing.assert_allclose(cached, reference, atol=TOLERANCE, rtol=0)


def test_key_blocks_no_query_sees_are_not_read():
    """Blocks past every query's position are skipped, not multiplied by a zero weight: NaN
    keys and values there (what an unwritten entry could hold) leave the output finite and
    equal to attention over the visible blocks alone."""
    forward_module = importlib.import_module("gemma_server.model.forward")
    block = forward_module.KEY_BLOCK
    rng = np.random.default_rng(0)
    b, k, g, t, hd, size = 2, 2, 2, 5, 16, 4 * block
    q = jnp.asarray(rng.standard_normal((b, k, g, t, hd)), jnp.float32)
    keys = rng.standard_normal((b, k, size, hd)).astype(np.float32)
    values = rng.standard_normal((b, k, size, hd)).astype(np.float32)
    keys[:, :, 2 * block:] = np.nan
    values[:, :, 2 * block:] = np.nan
    held = entry_positions(jnp.asarray([block + 3, 2 * block]), size)
    positions = jnp.asarray([block - 2 + np.arange(t), 2 * block - t + np.arange(t)])
    cfg = type("Cfg", (), {"attn_scale": 0.25, "attn_logit_softcap": None})()
    args = (positions, None, cfg)
    out = forward_module._attend_key_blocks(q, jnp.asarray(keys), jnp.asarray(values), held,
                                            *args)
    visible = (jnp.asarray(keys[:, :, :2 * block]), jnp.asarray(values[:, :, :2 * block]),
               held[:, :2 * block])
    expected = forward_module._attend_block(q, [visible], *args)
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-5, rtol=1e-5)
