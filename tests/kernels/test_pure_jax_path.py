"""With the CPU kernels off (as on GPU/TPU, or GEMMA_SERVER_CPU_KERNELS=0) decode takes XLA's
own products and attention: the same greedy tokens as through the kernels, for bfloat16 and
int8 weights. Run in a subprocess: whether the kernels are used is settled once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gemma_server.engine.greedy import greedy_tokens
from tests.conftest import golden

SCRIPT = """
import json, sys
from gemma_server.engine.greedy import greedy_tokens
from gemma_server.kernels import library
from gemma_server.model.checkpoint import load_checkpoint
assert not library.available()
path, dtype, quantize, prompt = sys.argv[1:5]
model = load_checkpoint(path, dtype=dtype, progress=False, quantize=quantize or None)
prompt = json.loads(prompt)
print(json.dumps(list(greedy_tokens(model.params, model.config, prompt, 8))))
"""


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_xla_products_give_the_kernels_tokens(tiny_dir, tiny_model, quantize):
    prompt = golden("tiny-gemma2")["ids_1"].tolist()
    model = tiny_model("tiny-gemma2", "bfloat16", quantize)
    with_kernels = list(greedy_tokens(model.params, model.config, prompt, 8))
    env = {**os.environ, "GEMMA_SERVER_CPU_KERNELS": "0"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_dir("tiny-gemma2")), "bfloat16",
                          quantize or "", json.dumps(prompt)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == with_kernels
