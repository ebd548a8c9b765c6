"""Runs in a subprocess with 4 host CPU devices (XLA_FLAGS is set before jax is imported):
serves the same requests unsharded and with --tensor-parallel 2 and 4, and prints JSON that
tests/model/test_tensor_parallel.py checks.

    python tensor_parallel_worker.py CHECKPOINT_DIR DTYPE QUANTIZE|none [LORA_DIR ...]
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import asyncio  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from gemma_server.config import EngineConfig  # noqa: E402
from gemma_server.datatypes import (  # noqa: E402
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from gemma_server.engine.engine import Engine  # noqa: E402
from gemma_server.lora import load_adapter  # noqa: E402
from gemma_server.model import sharding  # noqa: E402
from gemma_server.model.checkpoint import load_checkpoint  # noqa: E402

# As few compiled shapes as the checks need (each is compiled three times: 1, 2, 4 devices).
CONFIG = EngineConfig(max_batch_size=1, max_total_tokens=64, max_input_length=32,
                      max_batch_prefill_tokens=32, prefill_buckets=(32,),
                      prefill_batch_sizes=(1,), max_loras=0, max_lora_rank=8)
PROMPT = (2, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27)
GENERATED = 10


def spec_text(array: object) -> str:
    return str(getattr(getattr(array, "sharding"), "spec", "single device"))  # noqa: B009


def run(model, adapters, tensor_parallel: int) -> dict:
    """With adapters: two slots (a request with n=2, so a fork) and the LoRA stacks too."""
    mesh = sharding.make_mesh(tensor_parallel) if tensor_parallel > 1 else None
    config = dataclasses.replace(CONFIG, max_batch_size=2, max_loras=len(adapters)) \
        if adapters else CONFIG
    engine = Engine(model.params, model.config, config, mesh=mesh)
    engine.start()
    rows = [engine.load_adapter(adapter) for adapter in adapters]

    async def generate(request_id: str, adapter: int | None, n: int) -> list[list]:
        stream = engine.submit(GenerationRequest(
            request_id=request_id, prompt_ids=PROMPT, max_new_tokens=GENERATED,
            stop_ids=frozenset(), sampling=SamplingParams(temperature=0.0, ignore_eos=True),
            n=n, logprobs=3, adapter_id=adapter))
        choices: list[list] = [[] for _ in range(n)]
        async for event in stream:
            if isinstance(event, TokenEvent):
                choices[event.choice].append(
                    [event.token_id, event.logprob, [lp for _, lp in event.top_logprobs]])
        return choices

    async def everything() -> dict:
        out = {"base": await generate("base", None, 2 if adapters else 1)}
        for name, row in zip((a.name for a in adapters), rows, strict=True):
            out[name] = await generate(name, row, 1)
        return out

    result = {"outputs": asyncio.run(everything())}
    executor = engine.executor
    layer = executor.params["layers"][0]
    q = layer["q"] if "q" in layer else layer["qkv"]
    q = getattr(q, "q", q)  # int8: the matrix of the quantized weight
    result["shardings"] = {
        "q": spec_text(q), "o": spec_text(getattr(layer["o"], "q", layer["o"])),
        "down": spec_text(getattr(layer["down"], "q", layer["down"])),
        "embed": spec_text(getattr(executor.params["embed"], "q", executor.params["embed"])),
        "cache": spec_text(executor.cache.keys[0]),
        "devices": len(getattr(q, "sharding").device_set),  # noqa: B009
    }
    result["compilations_after_warm_up"] = executor.compilations_after_warm_up()
    engine.stop()
    return result


def main() -> None:
    path, dtype, quantize, *lora_dirs = sys.argv[1:]
    model = load_checkpoint(Path(path), dtype=dtype, progress=False,
                            quantize=None if quantize == "none" else quantize)
    adapters = [load_adapter(Path(d).name, d, model.config, 8) for d in lora_dirs]
    print(json.dumps({str(n): run(model, adapters, n) for n in (1, 2, 4)}))


if __name__ == "__main__":
    main()
