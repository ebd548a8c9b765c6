"""Peak memory of a real `gemma-server serve` process against what it planned to hold.

    python scripts/measure_server_memory.py [--shape bench-150m | --shape gemma-2b-shape |
        --checkpoint DIR] [--dtype bfloat16] [--quantize int8] [--max-batch-size 8]
        [--max-total-tokens 2048]

Starts the server, sends a burst of traffic that reaches every compiled shape (a long prompt,
then as many concurrent streams as there are slots), and reads the process's peak resident
set (VmHWM) from /proc. The plan is the parameter bytes plus the KV cache the engine
allocates (slots x max_total_tokens); the issue's target is peak <= 1.3x the plan.

`--shape gemma-2b-shape` writes (once, ~5 GB in bfloat16 under the demo cache) a random
checkpoint with the real Gemma 2B config: vocab 256000, hidden 2048, 18 layers, 8 heads,
1 kv head, head_dim 256, intermediate 16384.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import SHAPES, checkpoint_dir  # noqa: E402

from gemma_server.model.cache import cache_bytes  # noqa: E402
from gemma_server.model.checkpoint import resolve_dtype  # noqa: E402
from gemma_server.model.hf_config import config_from_hf_dict  # noqa: E402
from gemma_server.model.quantize import weight_bytes  # noqa: E402


def planned_bytes(path: Path, args: argparse.Namespace) -> tuple[int, int]:
    cfg = config_from_hf_dict(json.loads((path / "config.json").read_text()))
    dtype = resolve_dtype(args.dtype)
    kv = cache_bytes(cfg, args.max_batch_size, args.max_total_tokens, dtype)
    return weight_bytes(cfg, dtype, args.quantize), kv


async def traffic(url: str, slots: int, long_prompt: int) -> None:
    async def one(prompt: list[int], tokens: int) -> None:
        body = {"model": "bench", "prompt": prompt, "max_tokens": tokens, "stream": True,
                "ignore_eos": True, "temperature": 0.7, "seed": 1}
        async with client.stream("POST", "/v1/completions", json=body) as response:
            response.raise_for_status()
            async for _ in response.aiter_lines():
                pass

    async with httpx.AsyncClient(base_url=url, timeout=1200) as client:
        # token ids below 500: inside every tokenizer the project ships
        await one([10 + i % 490 for i in range(long_prompt)], 4)
        await asyncio.gather(*(one([20 + (i + j) % 480 for j in range(64)], 32)
                               for i in range(slots)))


def peak_rss(pid: int) -> tuple[int, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0]) * 1024
    return fields["VmHWM"], fields["VmRSS"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="bench-150m")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--quantize", choices=["int8"])
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-total-tokens", type=int, default=2048)
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()
    path = checkpoint_dir(args)
    command = [sys.executable, "-m", "gemma_server.cli", "serve", "--checkpoint", str(path),
               "--port", str(args.port), "--dtype", args.dtype, "--served-model-name", "bench",
               "--max-batch-size", str(args.max_batch_size),
               "--max-total-tokens", str(args.max_total_tokens),
               "--max-input-length", str(args.max_total_tokens - 64), "--log-level", "warning"]
    if args.quantize:
        command += ["--quantize", args.quantize]
    url = f"http://127.0.0.1:{args.port}"
    start = time.time()
    server = subprocess.Popen(command)
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with {server.returncode}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        ready = time.time() - start
        after_start, _ = peak_rss(server.pid)
        asyncio.run(traffic(url, args.max_batch_size, min(1500, args.max_total_tokens - 100)))
        peak, current = peak_rss(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=120)
    weights, kv = planned_bytes(path, args)
    plan = weights + kv
    print(f"checkpoint          {path.name} ({args.dtype}{', int8' if args.quantize else ''})")
    print(f"ready after         {ready:.0f} s")
    print(f"planned             {plan / 1e9:.2f} GB = weights {weights / 1e9:.2f} GB + KV cache "
          f"{kv / 1e9:.2f} GB ({args.max_batch_size} slots x {args.max_total_tokens} tokens)")
    print(f"peak RSS            {peak / 1e9:.2f} GB ({peak / plan:.2f}x the plan; "
          f"{after_start / 1e9:.2f} GB once ready, {current / 1e9:.2f} GB at the end)")


if __name__ == "__main__":
    main()
