"""The AVX-512 greedy-pick kernel against a NumPy reference and against sampling.py's XLA path,
and `sample` choosing between them by the rows' parameters.

Cases cover vocabularies that are not multiples of 16, ids at or past the tokenizer's limit,
NaN, infinities and logits below the mask value, ties (the first index wins), rows where
every logit is masked, and one or many rows.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemma_server.engine import sampling
from gemma_server.engine.sampling import MASKED, plain_greedy, sample
from gemma_server.engine.steps import init_state
from gemma_server.kernels import cpu_sampling, library

pytestmark = pytest.mark.skipif(not library.available(),
                                reason=f"sampling here: {library.describe()}")


def reference(logits: np.ndarray, vocab_limit: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 NumPy: the semantics cpu_sampling.cc documents."""
    ids = np.arange(logits.shape[1])[None, :]
    x = np.where(np.isfinite(logits) & (ids < vocab_limit), logits, MASKED).astype(np.float64)
    x = np.maximum(x, MASKED)
    tokens = np.argmax(x, axis=1)  # NumPy's argmax is the first index of the maximum
    top = x.max(axis=1, keepdims=True)
    logprob = -np.log(np.exp(x - top).sum(axis=1))
    return tokens, logprob


def awkward_logits(rows: int, vocab: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 4, (rows, vocab)).astype(np.float32)
    x[:, rng.integers(0, vocab, 5)] = np.nan
    x[:, rng.integers(0, vocab, 3)] = np.inf
    x[:, rng.integers(0, vocab, 3)] = -np.inf
    x[:, rng.integers(0, vocab, 3)] = -3e38  # below MASKED: clamped up to it
    return x


@pytest.mark.parametrize("rows,vocab,limit", [
    (1, 32000, 32000), (16, 32000, 31990), (3, 257, 250), (5, 1000, 1000), (2, 15, 15),
    (4, 33, 17),
])
def test_kernel_matches_the_reference(rows, vocab, limit):
    logits = awkward_logits(rows, vocab, seed=rows * vocab)
    tokens, logprob = cpu_sampling.greedy_pick(jnp.asarray(logits), limit)
    want_tokens, want_logprob = reference(logits, limit)
    np.testing.assert_array_equal(np.asarray(tokens), want_tokens)
    np.testing.assert_allclose(np.asarray(logprob), want_logprob, rtol=1e-5, atol=1e-6)


def test_ties_take_the_first_index_and_masked_ids_never_win():
    logits = np.zeros((3, 100), np.float32)
    logits[0, [7, 40, 90]] = 5.0  # three-way tie: 7
    logits[1, [63, 64]] = 2.0  # tie across two 16-lane vectors and lanes: 63
    logits[1, 99] = 9.0  # larger, but at or past the limit
    logits[2, :] = np.nan  # every logit masked: id 0, log(1/vocab)
    tokens, logprob = cpu_sampling.greedy_pick(jnp.asarray(logits), 96)
    assert np.asarray(tokens).tolist() == [7, 63, 0]
    want = reference(logits, 96)[1]
    np.testing.assert_allclose(np.asarray(logprob), want, rtol=1e-6)
    assert np.isclose(float(logprob[2]), -np.log(100), rtol=1e-6)


@pytest.mark.parametrize("rows", [1, 16])
def test_sample_gives_the_xla_paths_tokens_for_plain_greedy_rows(rows):
    """Plain greedy rows go through the kernel: same tokens as XLA's path, logprobs within
    float32 rounding (the sums are taken in another order)."""
    logits = jnp.asarray(awkward_logits(rows, 32000, seed=rows))
    state = jax.tree_util.tree_map(lambda a: a[:rows], init_state(16, 32000))
    assert bool(plain_greedy(state, 32000))
    got = jax.jit(sample, static_argnums=2)(logits, state, 31999)
    want = jax.jit(sampling._sample, static_argnums=2)(logits, state, 31999)
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
    np.testing.assert_allclose(np.asarray(got.logprob), np.asarray(want.logprob),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got.top_logprobs), np.asarray(want.top_logprobs))


@pytest.mark.parametrize("change", [
    {"temperature": 0.7}, {"repetition_penalty": 1.3}, {"frequency_penalty": 0.5},
    {"presence_penalty": -0.5}, {"wants_top": True}, {"bias": True},
])
def test_any_row_with_more_than_greedy_takes_xlas_path(change):
    """One row that samples, is penalised, biased or wants top logprobs sends the whole step
    through XLA's path, with every row's own parameters (results equal to it exactly)."""
    vocab = 512
    logits = jnp.asarray(np.random.default_rng(3).normal(0, 2, (4, vocab)).astype(np.float32))
    state = jax.tree_util.tree_map(lambda a: a[:4], init_state(16, vocab))
    state = dataclasses.replace(state, counts=state.counts.at[2, :50].set(1),
                                prompt_seen=state.prompt_seen.at[2, 50:100].set(True))
    if change.pop("bias", False):
        state = dataclasses.replace(state, bias_ids=state.bias_ids.at[2, 0].set(7),
                                    bias_values=state.bias_values.at[2, 0].set(40.0))
    for field, value in change.items():
        state = dataclasses.replace(state, **{field: getattr(state, field).at[2].set(value)})
    assert not bool(plain_greedy(state, vocab))
    got = jax.jit(sample, static_argnums=2)(logits, state, vocab)
    want = jax.jit(sampling._sample, static_argnums=2)(logits, state, vocab)
    for field in ("tokens", "logprob", "top_ids", "top_logprobs"):
        np.testing.assert_array_equal(np.asarray(getattr(got, field)),
                                      np.asarray(getattr(want, field)))


def nucleus_reference(x: np.ndarray, top_p: float) -> float:
    """float64 NumPy: sampling.py's sort-based threshold for one row."""
    sorted_desc = -np.sort(-x.astype(np.float64))
    probs = np.exp(sorted_desc - sorted_desc[0])
    probs /= probs.sum()
    before = np.cumsum(probs) - probs
    kept = (before < top_p) | (np.arange(x.size) == 0)
    return float(sorted_desc[kept].min())


@pytest.mark.parametrize("vocab,scale,top_p", [
    (32000, 1.0, 0.9), (32000, 8.0, 0.9), (1000, 3.0, 0.5), (257, 2.0, 0.99), (17, 1.0, 0.3),
    (5000, 20.0, 0.95), (100, 1.0, 0.0),
])
def test_top_p_threshold_matches_the_sorted_cumulative_mass(vocab, scale, top_p):
    """Flat and peaked rows (logits scaled up: a few tokens hold most of the mass), MASKED
    entries (a top-k filter's), ties; a row with top_p >= 1 gets -inf (keeps everything)."""
    rng = np.random.default_rng(vocab)
    x = (rng.normal(0, 1, (4, vocab)) * scale).astype(np.float32)
    x[1, rng.integers(0, vocab, vocab // 3)] = MASKED
    x[2, : vocab // 2] = x[2, 0]  # many ties
    top = np.array([top_p, top_p, top_p, 1.0], np.float32)
    got = np.asarray(cpu_sampling.top_p_threshold(jnp.asarray(x), jnp.asarray(top)))
    for r in range(3):
        assert got[r] == nucleus_reference(x[r], float(top[r])), r
    assert got[3] == -np.inf


@pytest.mark.parametrize("top_p", [0.5, 0.9])
def test_top_p_filter_keeps_the_same_tokens_as_xlas_sort(top_p, monkeypatch):
    x = jnp.asarray((np.random.default_rng(7).normal(0, 3, (16, 32000))).astype(np.float32))
    top = jnp.full((16,), top_p, jnp.float32).at[5].set(1.0)
    def traced() -> str:  # a new function each time: nothing cached from the other trace
        return str(jax.make_jaxpr(lambda a, b: sampling.filter_top_p(a, b))(x, top))

    assert "gs_top_p_threshold" in traced()
    with_kernel = np.asarray(jax.jit(lambda a, b: sampling.filter_top_p(a, b))(x, top))
    monkeypatch.setattr(cpu_sampling, "wanted", lambda: False)
    assert "gs_top_p_threshold" not in traced()
    with_sort = np.asarray(jax.jit(lambda a, b: sampling.filter_top_p(a, b))(x, top))
    np.testing.assert_array_equal(with_kernel, with_sort)
    kept = (with_kernel > MASKED).sum(axis=1)
    assert kept[5] == 32000 and 1 <= kept.min() < 32000
