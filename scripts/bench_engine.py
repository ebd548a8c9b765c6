"""Benchmark the generation engine directly (no HTTP): prefill, decode, throughput, compile time.

    python scripts/bench_engine.py [--checkpoint DIR | --shape bench-150m | --shape tiny]
        [--dtype float32|bfloat16] [--quantize int8] [--json OUT]

`--shape bench-150m` writes (once, into the demo cache) the random Gemma-shaped checkpoint of
`../shared/spec/performance.md`: hidden 1024, 12 layers, 8 heads / 2 kv heads, head_dim 128,
intermediate 3072, vocab 32000. Prompts are random token ids; decoding ignores stop tokens.
Numbers are medians of a few repetitions; run on a quiet machine.

`--lora 8` instead measures multi-LoRA decoding: 8 random rank-16 adapters on all projections
are loaded, and a batch of 8 requests each with its own adapter is timed against a batch of 8
base-model requests on the same engine (and the ratio printed).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from gemma_server.config import EngineConfig
from gemma_server.datatypes import GenerationRequest, SamplingParams, TokenEvent
from gemma_server.demo import cache_root
from gemma_server.engine.engine import Engine
from gemma_server.lora.adapter import TARGETS, LoraAdapter, projection_shape
from gemma_server.model.checkpoint import load_checkpoint
from gemma_server.model.config import GemmaConfig
from gemma_server.model.hf_config import config_from_hf_dict
from gemma_server.model.synthetic import GEMMA2_LAYOUT_TOKENIZER, SyntheticSpec, write_checkpoint
from gemma_server.model.tiny import TINY_GEMMA2

BENCH_150M = SyntheticSpec(
    name="bench-150m", tokenizer=GEMMA2_LAYOUT_TOKENIZER, eos_token_id=(1,), proj_std=0.03,
    embed_std=0.05, hf_config={
        "architectures": ["GemmaForCausalLM"], "model_type": "gemma", "vocab_size": 32000,
        "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 12,
        "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 128,
        "max_position_embeddings": 8192, "hidden_activation": "gelu_pytorch_tanh",
    },
)
# The real Gemma 2B config with random weights (~5 GB, written in bfloat16 and sharded).
GEMMA_2B_SHAPE = SyntheticSpec(
    name="gemma-2b-shape", tokenizer=GEMMA2_LAYOUT_TOKENIZER, eos_token_id=(1,), proj_std=0.02,
    embed_std=0.03, hf_config={
        "architectures": ["GemmaForCausalLM"], "model_type": "gemma", "vocab_size": 256000,
        "hidden_size": 2048, "intermediate_size": 16384, "num_hidden_layers": 18,
        "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256,
        "max_position_embeddings": 8192, "hidden_activation": "gelu_pytorch_tanh",
    },
)
SHAPES = {"bench-150m": BENCH_150M, "tiny": TINY_GEMMA2, "gemma-2b-shape": GEMMA_2B_SHAPE}
WRITE_OPTIONS: dict[str, dict[str, Any]] = {"gemma-2b-shape": {"shards": 4, "dtype": "bfloat16"}}


def checkpoint_dir(args: argparse.Namespace) -> Path:
    """--checkpoint as given, or the --shape checkpoint, written into the cache on first use."""
    if args.checkpoint:
        return Path(args.checkpoint)
    spec = SHAPES[args.shape]
    path = cache_root() / f"bench-{spec.name}"
    if not (path / "config.json").exists():
        print(f"writing the random {spec.name} checkpoint ...", flush=True)
        write_checkpoint(spec, path, config_from_hf_dict(dict(spec.hf_config)),
                         **WRITE_OPTIONS.get(spec.name, {}))
    return path


class Bench:
    def __init__(self, engine: Engine, vocab: int):
        self.engine, self.rng, self.vocab = engine, np.random.default_rng(0), vocab
        self.count = 0

    def request(self, prompt_len: int, max_new: int) -> GenerationRequest:
        self.count += 1
        ids = self.rng.integers(10, self.vocab, prompt_len).tolist()
        return GenerationRequest(f"b{self.count}", (2, *ids[1:]), max_new,
                                 sampling=SamplingParams(temperature=0.0, ignore_eos=True))

    async def timed(self, req: GenerationRequest) -> list[float]:
        """Arrival times of each token, relative to submission."""
        start, times = time.perf_counter(), []
        async for event in self.engine.submit(req):
            if isinstance(event, TokenEvent):
                times.append(time.perf_counter() - start)
        return times

    async def prefill(self, length: int, reps: int = 3) -> float:
        times = [(await self.timed(self.request(length, 1)))[0] for _ in range(reps)]
        return length / statistics.median(times)

    async def decode(self, batch: int, new: int = 48, reps: int = 2) -> float:
        rates = []
        for _ in range(reps):
            runs = await asyncio.gather(*[self.timed(self.request(16, new))
                                          for _ in range(batch)])
            first, last = max(r[0] for r in runs), max(r[-1] for r in runs)
            rates.append(batch * (new - 1) / (last - first))
        return statistics.median(rates)

    async def decode_adapters(self, adapters: list[int | None], new: int = 48,
                              reps: int = 2) -> float:
        """Aggregate decode tok/s of one request per entry (a LoRA row, or None = base)."""
        rates = []
        for _ in range(reps):
            requests = []
            for adapter in adapters:
                req = self.request(16, new)
                requests.append(dataclasses.replace(req, adapter_id=adapter))
            runs = await asyncio.gather(*[self.timed(r) for r in requests])
            first, last = max(r[0] for r in runs), max(r[-1] for r in runs)
            rates.append(len(adapters) * (new - 1) / (last - first))
        return statistics.median(rates)

    async def throughput(self, requests: int = 32, prompt: int = 128, new: int = 64) -> float:
        start = time.perf_counter()
        await asyncio.gather(*[self.timed(self.request(prompt, new)) for _ in range(requests)])
        return requests * new / (time.perf_counter() - start)


async def measure(bench: Bench, max_batch: int) -> dict[str, float]:
    out = {f"prefill_{n}_tok_s": await bench.prefill(n) for n in (512, 1500)}
    for b in (1, 8, 16):
        if b <= max_batch:
            out[f"decode_b{b}_tok_s"] = await bench.decode(b)
    out["throughput_32req_tok_s"] = await bench.throughput()
    return out


def random_adapters(cfg: GemmaConfig, count: int, rank: int = 16) -> list[LoraAdapter]:
    rng = np.random.default_rng(1)
    adapters = []
    for i in range(count):
        weights = {}
        for layer in range(cfg.num_layers):
            for target in TARGETS:
                fan_in, fan_out = projection_shape(cfg, target)
                weights[(layer, target)] = (
                    rng.standard_normal((fan_in, rank), np.float32) * 0.01,
                    rng.standard_normal((rank, fan_out), np.float32) * 0.01)
        adapters.append(LoraAdapter(f"bench{i}", Path("."), rank, weights))
    return adapters


async def measure_lora(bench: Bench, rows: list[int]) -> dict[str, float]:
    base = await bench.decode_adapters([None] * len(rows))
    tuned = await bench.decode_adapters(list(rows))
    return {f"decode_b{len(rows)}_base_tok_s": base,
            f"decode_b{len(rows)}_{len(rows)}_adapters_tok_s": tuned,
            "adapters_over_base": tuned / base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="bench-150m")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--quantize", choices=["int8"], default=None)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--lora", type=int, default=0, metavar="N",
                        help="measure N requests with N different adapters vs N base requests")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    ckpt = load_checkpoint(checkpoint_dir(args), dtype=args.dtype, progress=False,
                           quantize=args.quantize)
    config = EngineConfig(max_batch_size=args.max_batch_size, max_total_tokens=2048,
                          max_input_length=1600,
                          max_loras=args.lora, max_lora_rank=16)
    engine = Engine(ckpt.params, ckpt.config, config)
    engine.start()
    rows = [engine.load_adapter(a) for a in random_adapters(ckpt.config, args.lora)]
    results = {"checkpoint": str(ckpt.path), "dtype": args.dtype, "quantize": args.quantize,
               "params": ckpt.config.num_params(),
               "compile_s": engine.executor.compile_seconds,
               "compiled_prefill_shapes": len(engine.executor.prefill_shapes())}
    try:
        bench = Bench(engine, ckpt.config.vocab_size)
        if rows:
            results.update(asyncio.run(measure_lora(bench, rows)))
        else:
            results.update(asyncio.run(measure(bench, args.max_batch_size)))
    finally:
        engine.stop()
    width = max(len(k) for k in results)
    for key, value in results.items():
        shown = f"{value:,.1f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
