"""Data parallelism: an EnginePool of 2 replicas on 2 host CPU devices (a subprocess: the
device count is fixed when jax starts) balances requests across its replicas, gives the
tokens a single engine gives, keeps each replica's state on its own device, and loads and
unloads LoRA adapters in every replica."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import asyncio, json, sys
import jax
from gemma_server.config import EngineConfig
from gemma_server.datatypes import GenerationRequest, SamplingParams, TokenEvent
from gemma_server.engine.engine import Engine
from gemma_server.engine.pool import EnginePool
from gemma_server.errors import InvalidRequest
from gemma_server.lora import load_adapter
from gemma_server.model.checkpoint import load_checkpoint

path, lora = sys.argv[1:3]
model = load_checkpoint(path, progress=False)
config = EngineConfig(max_batch_size=2, max_total_tokens=64, max_input_length=32,
                      max_batch_prefill_tokens=32, prefill_buckets=(32,),
                      prefill_batch_sizes=(1,), max_loras=1, max_lora_rank=8)
adapter = load_adapter("attn", lora, model.config, 8)

def request(i, adapter_id=None):
    return GenerationRequest(
        request_id=f"r{i}", prompt_ids=(2, 10 + i, 11, 12, 13), max_new_tokens=24,
        stop_ids=frozenset(), sampling=SamplingParams(temperature=0.0, ignore_eos=True),
        adapter_id=adapter_id)

async def tokens(engine, req, seen=None):
    out = []
    async for event in engine.submit(req):
        if isinstance(event, TokenEvent):
            out.append(event.token_id)
            if seen is not None and len(out) == 2:
                seen.append([e.stats()["requests"] for e in engine.engines])
    return out

single = Engine(model.params, model.config, config)
single.start()
single.load_adapter(adapter)
async def reference():
    return [await tokens(single, request(i, 1 if i == 3 else None)) for i in range(4)]
want = asyncio.run(reference())
single.stop()

pool = EnginePool(model.params, model.config, config, jax.devices()[:2])
pool.start()
row = pool.load_adapter(adapter)
seen = []
async def together():
    return await asyncio.gather(*[tokens(pool, request(i, row if i == 3 else None), seen)
                                  for i in range(4)])
got = asyncio.run(together())
refused = False
async def hold():
    global refused
    stream = pool.submit(request(9, row))
    try:
        pool.unload_adapter("attn")
    except InvalidRequest:
        refused = True
    stream.cancel()
    [e async for e in stream]
asyncio.run(hold())
import time
for _ in range(500):
    if pool.stats()["requests"] == 0:
        break
    time.sleep(0.01)
pool.unload_adapter("attn")
print(json.dumps({
    "want": want, "got": got, "seen": seen, "refused_in_use": refused,
    "adapters_after": [e.adapters.names() for e in pool.engines],
    "devices": [str(next(iter(e.executor.cache.keys[0].devices()))) for e in pool.engines],
    "stats": pool.stats(),
}))
pool.stop()
"""


def test_pool_balances_and_matches_a_single_engine(tiny_dir):
    lora = Path(__file__).parents[1] / "goldens" / "lora" / "attn"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_dir("tiny-gemma2")), str(lora)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["got"] == result["want"]  # same tokens, base and LoRA, as one engine
    # four requests at once over two replicas of two slots: each replica took some
    assert any(min(counts) >= 1 for counts in result["seen"]), result["seen"]
    assert len(set(result["devices"])) == 2  # each replica's cache on its own device
    assert result["refused_in_use"] is True
    assert result["adapters_after"] == [[], []]
    stats = result["stats"]
    assert stats["slots"] == 4 and stats["free_slots"] == 4
    assert stats["compilations_after_warm_up"] == 0
