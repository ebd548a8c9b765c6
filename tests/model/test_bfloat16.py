"""bfloat16 parameters: same greedy tokens as float32, log-probs within a documented tolerance.

The tolerance (README, "Numerics") was measured on the tiny checkpoints: mean |Δ log p| over
the vocabulary 0.02–0.08, max 0.82 (tiny-gemma, whose random logits span ~35 nats).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemma_server.engine.executor import full_forward
from gemma_server.engine.greedy import greedy_tokens
from tests.conftest import ARCHS, golden, golden_prompts

MEAN_TOLERANCE = 0.1
MAX_TOLERANCE = 1.0
GREEDY_TOKENS = 8


@pytest.mark.parametrize("name", ARCHS)
def test_bfloat16_greedy_tokens_equal_float32_goldens(name, tiny_model):
    model = tiny_model(name, "bfloat16")
    assert model.params["embed"].dtype == jnp.bfloat16
    gold = golden(name)
    for i in golden_prompts(name):
        got = list(greedy_tokens(model.params, model.config, gold[f"ids_{i}"].tolist(),
                                 GREEDY_TOKENS))
        assert got == gold[f"greedy_{i}"][:GREEDY_TOKENS].tolist(), f"prompt {i}"


@pytest.mark.parametrize("name", ARCHS)
def test_bfloat16_logprobs_within_documented_tolerance(name, tiny_model):
    model = tiny_model(name, "bfloat16")
    gold = golden(name)
    for i in golden_prompts(name):
        ids = jnp.asarray(gold[f"ids_{i}"])[None]
        logits = full_forward(model.params, ids, jnp.arange(ids.shape[1])[None], model.config)
        assert logits.dtype == jnp.float32
        error = np.abs(np.asarray(jax.nn.log_softmax(logits[0], -1)) - gold[f"logprobs_{i}"])
        assert error.mean() < MEAN_TOLERANCE and error.max() < MAX_TOLERANCE, (
            f"prompt {i}: mean {error.mean():.3f}, max {error.max():.3f}"
        )
