"""scripts/bench_serving.py works end to end against a real server (numbers are not asserted)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
from pathlib import Path

from tests.api.conftest import MODEL

SCRIPT = Path(__file__).parents[2] / "scripts" / "bench_serving.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_serving", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_serving"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_serving_measures_a_real_server(server):
    bench = _module()
    args = argparse.Namespace(
        base_url=server.url, model=MODEL, api_key=None, num_prompts=6, concurrency=3,
        request_rate=0.0, input_len=12, output_len=8, range_ratio=0.25, ignore_eos=True,
        seed=0, timeout=60)
    results, wall = asyncio.run(bench.run(args))
    summary = bench.summarise(results, wall)
    assert summary["completed"] == 6 and summary["errors"] == 0
    assert all(r.output_tokens == len(r.itl) + 1 or r.output_tokens >= 1 for r in results)
    assert summary["ttft_ms"]["p50"] > 0 and summary["output_token_throughput"] > 0
    bench.print_table(summary)
