"""Tensor parallelism on 4 host CPU devices (a subprocess: the device count is fixed when jax
starts): every architecture, an MQA config (tiny-gemma: 1 KV head, replicated) and one whose
KV heads split in two but not in four (tiny-gemma2), LoRA adapters and int8 weights give the
same greedy tokens and log-probs (within 1e-4; top-3 too) with --tensor-parallel 2 and 4 as
unsharded,
the parameters and KV cache really are split, and nothing compiles after warm-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("tensor_parallel_worker.py")
LORA = Path(__file__).parents[1] / "goldens" / "lora"
CASES = [
    ("tiny-gemma", "float32", "none", []),  # MQA: one KV head
    # 2 KV heads (split in two, not in four); int8 weights; two LoRA adapters; n=2 (a fork)
    ("tiny-gemma2", "float32", "int8", ["attn", "all"]),
    ("tiny-gemma3", "float32", "none", []),
]


def serve_three_ways(checkpoint: Path, dtype: str, quantize: str, loras: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    run = subprocess.run([sys.executable, str(WORKER), str(checkpoint), dtype, quantize,
                          *(str(LORA / name) for name in loras)],
                         capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name,dtype,quantize,loras", CASES,
                         ids=[f"{c[0]}-{c[2]}{'-lora' if c[3] else ''}" for c in CASES])
def test_sharded_serving_matches_unsharded(tiny_dir, tiny_model, name, dtype, quantize, loras):
    result = serve_three_ways(tiny_dir(name), dtype, quantize, loras)
    cfg = tiny_model(name).config
    base = result["1"]["outputs"]
    assert set(base) == {"base", *loras}
    for n in ("2", "4"):
        got = result[n]["outputs"]
        for request, choices in base.items():
            for want, have in zip(choices, got[request], strict=True):
                assert [t for t, _, _ in have] == [t for t, _, _ in want], (n, request)
                np.testing.assert_allclose([lp for _, lp, _ in have], [lp for _, lp, _ in want],
                                           atol=1e-4)
                np.testing.assert_allclose([top for _, _, top in have],
                                           [top for _, _, top in want], atol=1e-4)
        shardings = result[n]["shardings"]
        assert shardings["devices"] == int(n)
        assert shardings["q"] == "P('model', None)"  # by attention heads
        assert shardings["o"] == shardings["down"] == "P(None, 'model')"
        assert shardings["embed"] == "P('model', None)"  # by vocabulary
        split_kv = cfg.num_kv_heads % int(n) == 0
        assert shardings["cache"] == ("P(None, 'model', None, None)" if split_kv
                                      else "P()")
        assert result[n]["compilations_after_warm_up"] == 0
    if loras:  # the two greedy choices of the n=2 request are equal: the fork works sharded
        assert result["4"]["outputs"]["base"][0] == result["4"]["outputs"]["base"][1]
