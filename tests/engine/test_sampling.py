"""Each sampling parameter against a NumPy reference implementation of its formula."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from gemma_server.datatypes import MAX_LOGIT_BIAS
from gemma_server.engine.sampling import (
    MASKED,
    SamplingRows,
    filter_top_k,
    filter_top_p,
    first_argmax,
    process_logits,
    sample,
)
from gemma_server.engine.steps import init_state

V = 64
RNG = np.random.default_rng(0)


def rows(n: int = 2, **fields) -> SamplingRows:
    state = dataclasses.replace(init_state(n, V), temperature=jnp.ones(n, jnp.float32))
    return dataclasses.replace(state, **{k: jnp.asarray(v) for k, v in fields.items()})


def logits(n: int = 2) -> np.ndarray:
    return (RNG.standard_normal((n, V)) * 3).astype(np.float32)


def test_repetition_penalty_follows_hugging_face():
    x = logits()
    seen = np.zeros((2, V), bool)
    seen[0, [1, 2, 3]] = True
    counts = np.zeros((2, V), np.int32)
    counts[1, [5, 6]] = 1
    out = np.asarray(process_logits(jnp.asarray(x), rows(
        repetition_penalty=np.array([1.3, 2.0], np.float32), prompt_seen=seen, counts=counts), V))
    expected = x.copy()
    for r, p in enumerate([1.3, 2.0]):
        hit = seen[r] | (counts[r] > 0)
        expected[r, hit] = np.where(x[r, hit] > 0, x[r, hit] / p, x[r, hit] * p)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_frequency_and_presence_penalties_follow_openai():
    x = logits()
    counts = RNG.integers(0, 4, (2, V)).astype(np.int32)
    freq, pres = np.array([0.5, -1.0], np.float32), np.array([1.5, 0.25], np.float32)
    out = np.asarray(process_logits(jnp.asarray(x), rows(
        counts=counts, frequency_penalty=freq, presence_penalty=pres), V))
    expected = x - freq[:, None] * counts - pres[:, None] * (counts > 0)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_logit_bias_nonfinite_and_out_of_vocab_masking():
    x = logits()
    x[0, 7], x[1, 8], x[1, 9] = np.nan, np.inf, -np.inf
    ids = np.full((2, MAX_LOGIT_BIAS), V, np.int32)
    values = np.zeros((2, MAX_LOGIT_BIAS), np.float32)
    ids[0, :2], values[0, :2] = [3, 4], [100.0, -100.0]
    out = np.asarray(process_logits(jnp.asarray(x), rows(bias_ids=ids, bias_values=values),
                                    V - 4))
    assert np.isfinite(out).all()
    assert out[0, 7] == MASKED and out[1, 8] == MASKED and out[1, 9] == MASKED
    assert (out[:, V - 4:] == MASKED).all()
    np.testing.assert_allclose(out[0, [3, 4]], x[0, [3, 4]] + [100.0, -100.0], rtol=1e-6)
    np.testing.assert_allclose(out[1, :7], x[1, :7])


def test_top_k_keeps_the_k_largest():
    x = logits()
    out = np.asarray(filter_top_k(jnp.asarray(x), jnp.asarray([3, 0])))
    kept = np.flatnonzero(out[0] > MASKED)
    np.testing.assert_array_equal(np.sort(kept), np.sort(np.argsort(-x[0])[:3]))
    np.testing.assert_array_equal(out[1], x[1])  # 0 = off


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_keeps_the_smallest_nucleus(top_p):
    x = logits()
    out = np.asarray(filter_top_p(jnp.asarray(x), jnp.asarray([top_p, 1.5], jnp.float32)))
    order = np.argsort(-x[0])
    probs = np.exp(x[0] - x[0].max())
    probs /= probs.sum()
    mass_before = np.cumsum(probs[order]) - probs[order]
    expected = set(order[(mass_before < top_p) | (np.arange(V) == 0)].tolist())
    assert set(np.flatnonzero(out[0] > MASKED).tolist()) == expected
    np.testing.assert_array_equal(out[1], x[1])  # >= 1 = off


def test_greedy_logprobs_and_top_logprobs():
    x = logits()
    drawn = sample(jnp.asarray(x), rows(temperature=np.zeros(2, np.float32),
                                        wants_top=np.array([True, False])), V)
    ref = x - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)) - \
        x.max(1, keepdims=True)
    np.testing.assert_array_equal(np.asarray(drawn.tokens), x.argmax(1))
    np.testing.assert_allclose(np.asarray(drawn.logprob), ref.max(1), atol=1e-5)
    np.testing.assert_allclose(np.asarray(drawn.top_logprobs), -np.sort(-ref, 1)[:, :20],
                               atol=1e-5)
    np.testing.assert_array_equal(np.asarray(drawn.top_ids)[:, 0], x.argmax(1))


def test_top_logprobs_are_skipped_when_no_row_asks_for_them():
    x = logits()
    drawn = sample(jnp.asarray(x), rows(temperature=np.zeros(2, np.float32)), V)
    np.testing.assert_array_equal(np.asarray(drawn.tokens), x.argmax(1))
    assert np.isneginf(np.asarray(drawn.top_logprobs)).all()


def test_temperature_sampling_matches_softmax_frequencies():
    """Draw many times with distinct steps; frequencies approach softmax(x / T)."""
    x = np.array([[0.0, 1.0, 2.0, 0.5] + [-1e9] * (V - 4)], np.float32)
    n = 4000
    state = rows(1, temperature=np.array([2.0], np.float32),
                 key_data=np.array([[0, 123]], np.uint32))
    batch = dataclasses.replace(
        rows(n), temperature=jnp.full(n, 2.0), key_data=jnp.tile(state.key_data, (n, 1)),
        step=jnp.arange(n, dtype=jnp.int32))
    tokens = np.asarray(sample(jnp.asarray(np.repeat(x, n, 0)), batch, V).tokens)
    p = np.exp(x[0, :4] / 2.0)
    p /= p.sum()
    freq = np.bincount(tokens, minlength=V)[:4] / n
    np.testing.assert_allclose(freq, p, atol=0.03)


def test_draws_depend_only_on_seed_and_step():
    x = jnp.asarray(np.repeat(logits(1), 3, 0))
    keys = np.array([[1, 2], [1, 2], [9, 9]], np.uint32)
    a = np.asarray(sample(x, rows(3, key_data=keys), V).tokens)
    shuffled = rows(3, key_data=keys[[2, 0, 1]])
    b = np.asarray(sample(x[jnp.asarray([2, 0, 1])], shuffled, V).tokens)
    assert a[0] == a[1] == b[1] == b[2] and a[2] == b[0]


def test_first_argmax_is_numpy_argmax_with_ties_and_masks():
    rng = np.random.default_rng(3)
    x = rng.integers(-3, 4, (64, 257)).astype(np.float32)  # many ties at the maximum
    x[5] = -np.inf
    x[5, 200] = 0.0
    x[7, :] = -1e30  # every entry masked: the first one, as argmax
    x[9, -1] = 99.0
    got = np.asarray(first_argmax(jnp.asarray(x)))
    np.testing.assert_array_equal(got, np.argmax(x, axis=-1))
    assert got.dtype == np.int32
