"""Our float32 logits against Hugging Face transformers' on the same tiny checkpoints."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemma_server.engine.executor import full_forward
from gemma_server.engine.greedy import greedy_tokens
from tests.conftest import ARCHS, golden, golden_prompts

TOLERANCE = 1e-4  # absolute, on log-probabilities


@pytest.mark.parametrize("name", ARCHS)
def test_logprobs_match_transformers_at_every_position(name, tiny_model):
    model = tiny_model(name)
    gold = golden(name)
    for i in golden_prompts(name):
        ids = jnp.asarray(gold[f"ids_{i}"])[None]
        positions = jnp.arange(ids.shape[1])[None]
        logits = full_forward(model.params, ids, positions, model.config)
        logprobs = np.asarray(jax.nn.log_softmax(logits[0], axis=-1))
        expected = gold[f"logprobs_{i}"]
        assert logprobs.shape == expected.shape
        error = float(np.abs(logprobs - expected).max())
        assert error < TOLERANCE, f"prompt {i}: max |Δ log p| = {error:.2e}"


def test_goldens_cover_the_hard_cases(tiny_model):
    """Prompts longer than every sliding window, multi-byte text, every architecture."""
    for name in ARCHS:
        cfg = tiny_model(name).config
        longest = max(len(golden(name)[f"ids_{i}"]) for i in golden_prompts(name))
        assert cfg.sliding_window is None or longest > 4 * cfg.sliding_window
    families = {tiny_model(name).config.family for name in ARCHS}
    assert families == {"gemma", "gemma2", "gemma3"}


@pytest.mark.parametrize("name", ARCHS)
def test_cached_greedy_decoding_matches_transformers_generate(name, tiny_model):
    model = tiny_model(name)
    gold = golden(name)
    for i in golden_prompts(name):
        expected = gold[f"greedy_{i}"].tolist()
        got = list(greedy_tokens(model.params, model.config, gold[f"ids_{i}"].tolist(),
                                 len(expected)))
        assert got == expected, f"prompt {i}"
