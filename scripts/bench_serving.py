"""Load-test any OpenAI-compatible server over streaming `/v1/completions` (like vLLM's
`bench serve`), so the same tool measures gemma_server and its peers.

    python scripts/bench_serving.py --base-url http://127.0.0.1:8000 --model gemma-demo \
        --num-prompts 64 --concurrency 8 --input-len 128 --output-len 64 --ignore-eos
    python scripts/bench_serving.py ... --request-rate 4      # Poisson arrivals, 4 req/s

Prompts are random words (seeded); their token counts come back in the usage chunk
(`stream_options.include_usage`). Reported: TTFT, time per output token (TPOT), inter-token
latency (ITL) and end-to-end latency at p50/p90/p99, request and token throughput, errors.
`--json FILE` writes every number. A server that hands out several tokens at once
(gemma_server's `--decode-steps`, vLLM's multi-step scheduling) shows near-zero ITL inside a
burst and one step's worth between bursts; TPOT, (last - first token time) / (tokens - 1),
is the per-token rate either way.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

_TEXT = ("the of and to in is was for on that with as by at from his it an were are which "
         "this be or has had not first one their its new after but who they have her she two "
         "been other when there all during into school time may years more most only over "
         "city some world would where later up such used many can state about national out "
         "known university united then made")
WORDS = _TEXT.split()


@dataclasses.dataclass
class Result:
    ok: bool
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = dataclasses.field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str = ""


def make_prompts(n: int, input_len: int, ratio: float, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        words = max(1, int(input_len * rng.uniform(1 - ratio, 1 + ratio)))
        prompts.append((" ".join(rng.choice(WORDS) for _ in range(words)), words))
    return prompts


async def one_request(client: httpx.AsyncClient, args: argparse.Namespace, prompt: str,
                      output_len: int) -> Result:
    body: dict[str, Any] = {
        "model": args.model, "prompt": prompt, "max_tokens": output_len, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True},
    }
    if args.ignore_eos:
        body["ignore_eos"] = True
    start = time.perf_counter()
    result, last = Result(ok=False), 0.0
    try:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    result.ok = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    result.error = str(chunk["error"])
                    break
                now = time.perf_counter()
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    if result.ttft == 0.0:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last = now
                if chunk.get("usage"):
                    result.prompt_tokens = chunk["usage"]["prompt_tokens"]
                    result.output_tokens = chunk["usage"]["completion_tokens"]
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.latency = time.perf_counter() - start
    return result


async def run(args: argparse.Namespace) -> tuple[list[Result], float]:
    prompts = make_prompts(args.num_prompts, args.input_len, args.range_ratio, args.seed)
    rng = random.Random(args.seed + 1)
    outputs = [max(1, int(args.output_len * rng.uniform(1 - args.range_ratio,
                                                        1 + args.range_ratio)))
               for _ in prompts]
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=max(args.concurrency, 1) * 2)
    semaphore = asyncio.Semaphore(args.concurrency if args.concurrency > 0 else len(prompts))
    async with httpx.AsyncClient(base_url=args.base_url, headers=headers, timeout=args.timeout,
                                 limits=limits) as client:
        async def guarded(prompt: str, output_len: int) -> Result:
            async with semaphore:
                return await one_request(client, args, prompt, output_len)

        start = time.perf_counter()
        tasks = []
        for (prompt, _), output_len in zip(prompts, outputs, strict=True):
            tasks.append(asyncio.ensure_future(guarded(prompt, output_len)))
            if args.request_rate > 0:
                await asyncio.sleep(rng.expovariate(args.request_rate))
        results = await asyncio.gather(*tasks)
        return list(results), time.perf_counter() - start


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    return {"mean": statistics.fmean(values), "p50": pick(0.5), "p90": pick(0.9),
            "p99": pick(0.99)}


def summarise(results: list[Result], wall: float) -> dict[str, Any]:
    good = [r for r in results if r.ok]
    output_tokens = sum(r.output_tokens for r in good)
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in good if r.output_tokens > 1]
    return {
        "requests": len(results), "completed": len(good), "errors": len(results) - len(good),
        "first_error": next((r.error for r in results if not r.ok), None),
        "duration_s": wall, "request_throughput": len(good) / wall,
        "output_token_throughput": output_tokens / wall,
        "total_token_throughput": (output_tokens + sum(r.prompt_tokens for r in good)) / wall,
        "mean_prompt_tokens": statistics.fmean([r.prompt_tokens for r in good]) if good else 0,
        "ttft_ms": {k: v * 1000 for k, v in percentiles([r.ttft for r in good]).items()},
        "tpot_ms": {k: v * 1000 for k, v in percentiles(tpot).items()},
        "itl_ms": {k: v * 1000 for k, v in percentiles(
            [x for r in good for x in r.itl]).items()},
        "e2e_latency_ms": {k: v * 1000 for k, v in percentiles(
            [r.latency for r in good]).items()},
    }


def print_table(summary: dict[str, Any]) -> None:
    print(f"requests {summary['completed']}/{summary['requests']} ok, "
          f"{summary['errors']} errors, {summary['duration_s']:.1f} s")
    if summary["first_error"]:
        print(f"first error: {summary['first_error']}")
    print(f"request throughput       {summary['request_throughput']:10.2f} req/s")
    print(f"output token throughput  {summary['output_token_throughput']:10.1f} tok/s")
    print(f"total token throughput   {summary['total_token_throughput']:10.1f} tok/s")
    print(f"{'metric':<16}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}  (ms)")
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_latency_ms"):
        row = summary[key]
        print(f"{key[:-3]:<16}" + "".join(f"{row[q]:10.1f}" for q in ("mean", "p50", "p90",
                                                                     "p99")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", required=True)
    parser.add_argument("--api-key")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8, help="0: no limit")
    parser.add_argument("--request-rate", type=float, default=0.0,
                        help="Poisson arrivals per second (0: all at once, bounded by "
                             "--concurrency)")
    parser.add_argument("--input-len", type=int, default=128, help="prompt words (about tokens)")
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--range-ratio", type=float, default=0.0,
                        help="lengths drawn uniformly in [len*(1-r), len*(1+r)]")
    parser.add_argument("--ignore-eos", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results, wall = asyncio.run(run(args))
    summary = summarise(results, wall)
    summary["config"] = {k: v for k, v in vars(args).items() if k not in ("api_key", "json")}
    print_table(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
