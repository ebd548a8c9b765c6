"""gemma_server beside llama.cpp and transformers on the same checkpoint, in one run.

    python scripts/bench_peers.py --llama-cpp-source DIR [--shape bench-150m | --checkpoint DIR]
        [--dtypes float32,bfloat16,int8] [--systems gemma_server,engine,llama.cpp,transformers]
        [--threads 2] [--bandwidth-gbs 38] [--json OUT]

Runs in a separate virtualenv that has the project plus the peers (never a CI dependency):

    python -m venv venv-ref && venv-ref/bin/pip install torch==2.13.0 transformers \
        -e /path/to/gemma_server
    venv-ref/bin/pip download llama-cpp-python --no-binary :all: --no-deps -d peers
    tar xzf peers/llama_cpp_python-*.tar.gz -C peers
    CMAKE_ARGS="-DGGML_NATIVE=ON" venv-ref/bin/pip install peers/llama_cpp_python-*/ \
        peers/llama_cpp_python-*/vendor/llama.cpp/gguf-py
    venv-ref/bin/python scripts/bench_peers.py \
        --llama-cpp-source peers/llama_cpp_python-*/vendor/llama.cpp

The checkpoint is converted to GGUF (f32, bf16, q8_0 for our int8) with the converter shipped
in that source tree. gemma_server is measured **through its HTTP API** (a real `gemma-server
serve` process, streaming `/v1/completions` with token-id prompts); llama.cpp through its C
API (llama-cpp-python's low-level bindings, batched decode over 16 sequences); transformers
with a KV cache in eager PyTorch. Same work everywhere, greedy, `--threads` threads. The
systems of one dtype are loaded together and take turns, one repetition each (decode b1, 16
streams, prefill), so that the host's memory bandwidth, which drifts by tens of percent
within minutes on a shared VM, weighs on all of them alike; figures are medians over the
repetitions (`--reps`, default 3):

- decode b1: 64-token prompt, then 128 tokens; rate = tokens after the first / the time
  from the first to the last (gemma_server hands out up to `--decode-steps` tokens at once,
  so a median gap between tokens would not be a rate);
- decode b16: 16 sequences of 64-token prompts decoding together, 32 tokens each; aggregate
  rate = 16 x 31 tokens / the time from the last stream's first token to the last token;
- prefill 1500: time to the first token of a 1500-token prompt; rate = 1500 / that time.

`--systems ...,engine` adds gemma_server's engine in this process (no HTTP, the server's
settings), measured by the same rules in the same turns: the report then prints the HTTP/SSE
layer's cost as "through HTTP / engine alone" ratios.

Roofline: batch-1 fraction = weight bytes read per token × rate ÷ the memory read bandwidth;
b16 fraction against 16 / max(bytes / bandwidth, 2·params·16 / peak FLOP/s) with 200
(f32/int8) or 410 (bf16) GFLOP/s. The bandwidth (`--threads` NumPy threads reading their part
of a 1 GiB array, best of 5) is probed before every repetition, and each repetition's rates
are set against its own probe: the host's bandwidth drifts by tens of percent within minutes,
so a single probe at the start (printed too, "start probe") can be far from what the
repetitions met. Each fraction is the median over the repetitions. `--bandwidth-gbs` fixes the
bandwidth instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import SHAPES, Bench  # noqa: E402
from bench_engine import checkpoint_dir as bench_checkpoint_dir  # noqa: E402

PROMPT, DECODE, B16, B16_TOKENS, LONG = 64, 128, 16, 32, 1500
GGUF_TYPES = {"float32": "f32", "bfloat16": "bf16", "int8": "q8_0"}
PEAK_GFLOPS = {"float32": 200.0, "bfloat16": 410.0, "int8": 200.0}


def prompts(vocab: int, n: int, length: int, seed: int) -> list[list[int]]:
    """Random token ids below `vocab` (the tokenizer's size: the server accepts no others)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(10, vocab, length).tolist() for _ in range(n)]


class BandwidthProbe:
    """Memory read bandwidth in GB/s: `threads` threads each taking the max of their part of a
    1 GiB array (a SIMD streaming read; NumPy releases the GIL; best of 5). The array is kept
    (and touched once) so that every probe of a run reads the same memory; `fixed` (GB/s)
    replaces the measurement."""

    def __init__(self, threads: int, fixed: float | None = None):
        self.threads, self.fixed = threads, fixed
        self.data = None if fixed else np.ones(1 << 28, np.float32)

    def __call__(self) -> float:
        if self.data is None:
            assert self.fixed is not None
            return self.fixed
        from concurrent.futures import ThreadPoolExecutor

        parts = np.array_split(self.data, self.threads)
        best = float("inf")
        with ThreadPoolExecutor(self.threads) as pool:
            for _ in range(5):
                start = time.perf_counter()
                list(pool.map(np.max, parts))
                best = min(best, time.perf_counter() - start)
        return self.data.nbytes / best / 1e9


# --- gemma_server, through its HTTP API ---

class Server:
    def __init__(self, checkpoint: Path, dtype: str, threads: int, port: int,
                 extra: tuple[str, ...] = ()):
        args = [sys.executable, "-m", "gemma_server.cli", "serve", "--checkpoint", str(checkpoint),
                "--port", str(port), "--max-batch-size", "16", "--max-total-tokens", "2048",
                "--max-input-length", "1600", "--served-model-name", "bench",
                "--log-level", "warning"]
        args += ["--dtype", "bfloat16", "--quantize", "int8"] if dtype == "int8" else \
            ["--dtype", dtype]
        args += extra
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(args, env=env)
        deadline = time.time() + 900
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gemma-server exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError("gemma-server did not become ready")

    def peak_rss_gb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e6
        return 0.0

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


async def stream(client: httpx.AsyncClient, prompt: list[int], max_tokens: int) -> list[float]:
    """Arrival times of each streamed token (the first is the TTFT), from the request start."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "ignore_eos": True}
    start, times = time.perf_counter(), []
    async with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
                chunk = json.loads(line[5:])
                if "error" in chunk:
                    raise RuntimeError(chunk["error"])
                times.append(time.perf_counter() - start)
    return times


class Samples:
    """One system's measurements, gathered one repetition at a time (see `interleaved`)."""

    def __init__(self) -> None:
        self.b1: list[float] = []  # decode b1 rates, one per repetition
        self.b16: list[float] = []  # aggregate 16-sequence decode rates, one per repetition
        self.prefill: list[float] = []  # 1500-token prefill rates

    def rep(self, rep: int) -> None:
        """Measure decode b1, 16 streams and prefill once, appending to the lists."""
        raise NotImplementedError

    def result(self) -> dict[str, Any]:
        """Medians, and every repetition's figure (to judge the spread of a run)."""
        return {"b1": statistics.median(self.b1), "b16": statistics.median(self.b16),
                "prefill": statistics.median(self.prefill),
                "reps": {"b1": self.b1, "b16": self.b16, "prefill": self.prefill}}

    def close(self) -> None:
        """Free what the system holds (a server process, a model)."""

    async def measure(self, timed: Callable[[list[int], int], Awaitable[list[float]]],
                      vocab: int, rep: int) -> None:
        """One repetition of decode b1, 16 streams and prefill for a system that streams:
        `timed(prompt, max_tokens)` gives each token's arrival time from the request's
        start (gemma_server through HTTP, or its engine in this process)."""
        times = await timed(prompts(vocab, 1, PROMPT, rep)[0], DECODE)
        self.b1.append((len(times) - 1) / (times[-1] - times[0]))
        runs = await asyncio.gather(*(timed(p, B16_TOKENS)
                                      for p in prompts(vocab, B16, PROMPT, 100 + rep)))
        first, last = max(t[0] for t in runs), max(t[-1] for t in runs)
        self.b16.append(B16 * (B16_TOKENS - 1) / (last - first))
        times = await timed(prompts(vocab, 1, LONG, 200 + rep)[0], 1)
        self.prefill.append(LONG / times[0])


class GemmaServer(Samples):
    """gemma_server through its HTTP API: a real `gemma-server serve` process."""

    def __init__(self, checkpoint: Path, dtype: str, args: argparse.Namespace, vocab: int,
                 extra: tuple[str, ...] = (), port_offset: int = 0):
        super().__init__()
        self.server = Server(checkpoint, dtype, args.threads, args.port + port_offset, extra)
        self.vocab = vocab
        asyncio.run(self._with_client(lambda c: stream(c, prompts(vocab, 1, PROMPT, 99)[0], 4)))

    async def _with_client(self, work: Any) -> Any:
        async with httpx.AsyncClient(base_url=self.server.url, timeout=600) as client:
            return await work(client)

    def rep(self, rep: int) -> None:
        asyncio.run(self._with_client(
            lambda c: self.measure(lambda p, n: stream(c, p, n), self.vocab, rep)))

    def result(self) -> dict[str, Any]:
        return {**super().result(), "peak_rss_gb": self.server.peak_rss_gb()}

    def close(self) -> None:
        self.server.stop()


class GemmaEngine(Samples):
    """gemma_server's engine in this process, without HTTP: the same settings as the server
    (`ServerSettings.engine_config`), the same token ids and the same rate rules, so that its
    figures beside the server's are the HTTP/SSE layer's cost, measured in the same run."""

    def __init__(self, checkpoint: Path, dtype: str, vocab: int):
        super().__init__()
        from gemma_server.engine.engine import Engine
        from gemma_server.loading import load_model
        from gemma_server.settings import ServerSettings

        settings = ServerSettings(
            checkpoint=str(checkpoint), max_batch_size=16, max_total_tokens=2048,
            max_input_length=1600, dtype="bfloat16" if dtype == "int8" else dtype,
            quantize="int8" if dtype == "int8" else None)
        model = load_model(settings.checkpoint, settings.dtype, progress=False,
                           quantize=settings.quantize)
        self.engine = Engine(model.checkpoint.params, model.checkpoint.config,
                             settings.engine_config(settings.lora_capacity(0)),
                             vocab_limit=model.tokenizer.vocab_size)
        self.engine.start()
        self.bench = Bench(self.engine, vocab)
        self.vocab, self.count = vocab, 0
        asyncio.run(self._timed(prompts(vocab, 1, PROMPT, 99)[0], 4))

    async def _timed(self, prompt: list[int], max_tokens: int) -> list[float]:
        """Arrival times of each token from submission (`Bench.timed`), as `stream` times
        them over HTTP."""
        from gemma_server.datatypes import GenerationRequest, SamplingParams

        self.count += 1
        return await self.bench.timed(GenerationRequest(
            f"e{self.count}", tuple(prompt), max_tokens,
            sampling=SamplingParams(temperature=0.0, ignore_eos=True)))

    def rep(self, rep: int) -> None:
        asyncio.run(self.measure(self._timed, self.vocab, rep))

    def close(self) -> None:
        self.engine.stop()


# --- llama.cpp, through its C API (llama-cpp-python bindings) ---

def convert_to_gguf(checkpoint: Path, source: Path, outtype: str, out_dir: Path) -> Path:
    out = out_dir / f"{checkpoint.name}-{outtype}.gguf"
    if not out.exists():
        subprocess.run([sys.executable, str(source / "convert_hf_to_gguf.py"), str(checkpoint),
                        "--outtype", outtype, "--outfile", str(out)], check=True,
                       stdout=subprocess.DEVNULL)
    return out


_QUIET: list[Any] = []  # keeps the log callback alive


class LlamaCpp(Samples):
    """llama.cpp through its C API, on a GGUF file."""

    def __init__(self, gguf: Path, threads: int, vocab: int):
        import llama_cpp as lc

        super().__init__()
        self.lc, self.gguf, self.vocab = lc, gguf, vocab
        if not _QUIET:
            _QUIET.append(lc.llama_log_callback(lambda level, text, data: None))
            lc.llama_log_set(_QUIET[0], None)
        lc.llama_backend_init()
        self.model = lc.llama_model_load_from_file(str(gguf).encode(),
                                                   lc.llama_model_default_params())
        params = lc.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = 2048, 2048, 512
        params.n_seq_max, params.kv_unified = B16, True
        params.n_threads = params.n_threads_batch = threads
        self.ctx = lc.llama_init_from_model(self.model, params)
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.batch = lc.llama_batch_init(2048, 0, B16)

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        batch = self.batch
        batch.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        if self.lc.llama_decode(self.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def _argmax(self, i: int) -> int:
        return int(np.argmax(np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx, i),
                                                   shape=(self.n_vocab,))))

    def _prefill(self, seqs: list[list[int]]) -> list[int]:
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        self._decode([(t, p, s, p == len(ids) - 1) for s, ids in enumerate(seqs)
                      for p, t in enumerate(ids)])
        return [self._argmax(s * len(seqs[0]) + len(seqs[0]) - 1) for s in range(len(seqs))]

    def rep(self, rep: int) -> None:
        token = self._prefill(prompts(self.vocab, 1, PROMPT, rep))[0]
        times = []
        for pos in range(PROMPT, PROMPT + DECODE):
            start = time.perf_counter()
            self._decode([(token, pos, 0, True)])
            token = self._argmax(0)
            times.append(time.perf_counter() - start)
        self.b1.append(len(times) / sum(times))
        tokens = self._prefill(prompts(self.vocab, B16, PROMPT, 100 + rep))
        start = time.perf_counter()
        for pos in range(PROMPT, PROMPT + B16_TOKENS - 1):
            self._decode([(t, pos, s, True) for s, t in enumerate(tokens)])
            tokens = [self._argmax(s) for s in range(B16)]
        self.b16.append(B16 * (B16_TOKENS - 1) / (time.perf_counter() - start))
        start = time.perf_counter()
        self._prefill(prompts(self.vocab, 1, LONG, 200 + rep))
        self.prefill.append(LONG / (time.perf_counter() - start))

    def result(self) -> dict[str, Any]:
        return {**super().result(), "weights_gb": self.gguf.stat().st_size / 1e9}

    def close(self) -> None:
        self.lc.llama_batch_free(self.batch)
        self.lc.llama_free(self.ctx)
        self.lc.llama_model_free(self.model)


# --- transformers ---

class Transformers(Samples):
    """transformers, eager PyTorch with a KV cache."""

    def __init__(self, checkpoint: Path, dtype: str, threads: int, vocab: int):
        import torch
        from transformers import AutoModelForCausalLM

        super().__init__()
        torch.set_num_threads(threads)
        self.torch, self.vocab = torch, vocab
        self.model = AutoModelForCausalLM.from_pretrained(
            checkpoint, dtype=getattr(torch, dtype), attn_implementation="eager").eval()

    def _decode_steps(self, batch: list[list[int]], steps: int) -> list[float]:
        torch, model = self.torch, self.model
        with torch.inference_mode():
            out = model(torch.tensor(batch), use_cache=True, logits_to_keep=1)
            cache, times = out.past_key_values, []
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            for _ in range(steps):
                start = time.perf_counter()
                out = model(token, past_key_values=cache, use_cache=True)
                cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                times.append(time.perf_counter() - start)
        return times

    def rep(self, rep: int) -> None:
        times = self._decode_steps(prompts(self.vocab, 1, PROMPT, rep), DECODE)
        self.b1.append(len(times) / sum(times))
        times = self._decode_steps(prompts(self.vocab, B16, PROMPT, 100 + rep), B16_TOKENS - 1)
        self.b16.append(B16 * len(times) / sum(times))
        ids = prompts(self.vocab, 1, LONG, 200 + rep)[0]
        with self.torch.inference_mode():
            start = time.perf_counter()
            self.model(self.torch.tensor([ids]), use_cache=True, logits_to_keep=1)
            self.prefill.append(LONG / (time.perf_counter() - start))

    def close(self) -> None:
        del self.model


def interleaved(systems: dict[str, Samples], reps: int,
                probe: Callable[[], float]) -> dict[str, dict[str, Any]]:
    """Each repetition measures every system in turn (decode b1, 16 streams, prefill), so the
    host's memory bandwidth, which drifts by tens of percent within minutes on a shared VM,
    weighs on all of them alike; each figure is the median over the repetitions. The
    bandwidth is probed before each repetition (`bandwidth_gbs` in every result)."""
    bandwidths = []
    for rep in range(reps):
        bandwidths.append(probe())
        for system in systems.values():
            system.rep(rep)
    return {name: {**system.result(), "bandwidth_gbs": bandwidths}
            for name, system in systems.items()}


# --- report ---

def weight_gb(cfg: Any, dtype: str) -> float:
    from gemma_server.model.quantize import weight_bytes

    if dtype == "int8":
        return weight_bytes(cfg, jnp.bfloat16, "int8") / 1e9
    return weight_bytes(cfg, jnp.dtype(dtype), None) / 1e9


def roofline_fractions(r: dict[str, Any], gb: float, params: int,
                       dtype: str) -> tuple[float, float]:
    """Median over the repetitions of each one's b1 and b16 rates against the bandwidth probed
    just before it (see the module docstring)."""
    b1, b16 = [], []
    reps = r["reps"]
    for rate1, rate16, bandwidth in zip(reps["b1"], reps["b16"], r["bandwidth_gbs"],
                                        strict=True):
        b1.append(gb * rate1 / bandwidth)
        limit = B16 / max(gb / bandwidth, 2 * params * B16 / (PEAK_GFLOPS[dtype] * 1e9))
        b16.append(rate16 / limit)
    return statistics.median(b1), statistics.median(b16)


def report(results: dict[str, dict[str, dict[str, Any]]], cfg: Any) -> list[str]:
    params = cfg.num_params()
    lines = ["| dtype | system | decode b1 tok/s | vs llama.cpp | b1 roofline | 16 streams tok/s "
             "| vs llama.cpp | b16 roofline | prefill 1500 tok/s | vs best peer |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for dtype, systems in results.items():
        ours_gb = weight_gb(cfg, dtype)
        llama = systems.get("llama.cpp", {})
        best_prefill = max((r["prefill"] for name, r in systems.items()
                            if not name.startswith("gemma_server")), default=None)
        for name, r in systems.items():
            gb = r.get("weights_gb", ours_gb)
            b1_fraction, b16_fraction = roofline_fractions(r, gb, params, dtype)

            def ratio(key: str, against: float | None, r: dict[str, Any] = r) -> str:
                return f"{r[key] / against:.2f}x" if against else "-"

            lines.append(
                f"| {dtype} | {name} | {r['b1']:.1f} | {ratio('b1', llama.get('b1'))} | "
                f"{b1_fraction:.0%} | {r['b16']:.1f} | "
                f"{ratio('b16', llama.get('b16'))} | {b16_fraction:.0%} | "
                f"{r['prefill']:.0f} | "
                f"{ratio('prefill', best_prefill) if name.startswith('gemma_server') else '-'} |")
    for dtype, systems in results.items():
        probes = next(iter(systems.values()))["bandwidth_gbs"]
        lines.append(f"{dtype}: bandwidth probed before each repetition: "
                     + ", ".join(f"{b:.1f}" for b in probes) + " GB/s")
    for dtype, systems in results.items():
        http, engine = systems.get("gemma_server"), systems.get("gemma_server engine")
        if http and engine:
            lines.append(f"{dtype}: through HTTP / engine alone: " + ", ".join(
                f"{key} {http[key] / engine[key]:.0%}" for key in ("b1", "b16", "prefill")))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="bench-150m")
    parser.add_argument("--llama-cpp-source", type=Path,
                        help="llama.cpp source tree holding convert_hf_to_gguf.py")
    parser.add_argument("--dtypes", default="float32,bfloat16,int8")
    parser.add_argument("--systems", default="gemma_server,llama.cpp,transformers",
                        help="any of gemma_server (through HTTP), engine (gemma_server's "
                             "engine in this process, no HTTP), llama.cpp, transformers")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--bandwidth-gbs", type=float,
                        help="memory read bandwidth for the roofline (default: measured)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--server-variant", action="append", default=[], metavar="ARGS",
                        help="also measure a gemma_server started with these extra serve "
                             "arguments, e.g. '--decode-steps 1' (an A/B in the same run)")
    parser.add_argument("--gguf-dir", type=Path, default=Path("/tmp/gemma_server_gguf"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    checkpoint = bench_checkpoint_dir(args)
    config = json.loads((checkpoint / "config.json").read_text())
    from gemma_server.model.hf_config import config_from_hf_dict

    cfg = config_from_hf_dict(config)
    from gemma_server.tokenizer import GemmaTokenizer

    vocab = GemmaTokenizer(checkpoint / "tokenizer.model").vocab_size
    probe = BandwidthProbe(args.threads, args.bandwidth_gbs)
    start_bandwidth = probe()
    systems = args.systems.split(",")
    args.gguf_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for dtype in args.dtypes.split(","):
        if "llama.cpp" in systems and args.llama_cpp_source is None:
            parser.error("--llama-cpp-source is needed to measure llama.cpp")
        loaded: dict[str, Samples] = {}
        try:
            if "gemma_server" in systems:
                loaded["gemma_server"] = GemmaServer(checkpoint, dtype, args, vocab)
            if "engine" in systems:
                loaded["gemma_server engine"] = GemmaEngine(checkpoint, dtype, vocab)
            for i, variant in enumerate(args.server_variant, start=1):
                loaded[f"gemma_server {variant}"] = GemmaServer(
                    checkpoint, dtype, args, vocab, tuple(variant.split()), port_offset=i)
            if "llama.cpp" in systems:
                gguf = convert_to_gguf(checkpoint, args.llama_cpp_source, GGUF_TYPES[dtype],
                                       args.gguf_dir)
                loaded["llama.cpp"] = LlamaCpp(gguf, args.threads, vocab)
            if "transformers" in systems and dtype != "int8":
                loaded["transformers"] = Transformers(checkpoint, dtype, args.threads, vocab)
            results[dtype] = interleaved(loaded, args.reps, probe)
        finally:
            for system in loaded.values():
                system.close()
        print(json.dumps({dtype: results[dtype]}), flush=True)
    print(f"\n{checkpoint.name}: {cfg.num_params() / 1e6:.1f} M parameters, {args.threads} "
          f"threads, memory read bandwidth {start_bandwidth:.1f} GB/s (start probe)")
    print("\n".join(report(results, cfg)))
    if args.json:
        args.json.write_text(json.dumps({"checkpoint": str(checkpoint), "threads": args.threads,
                                         "bandwidth_gbs": start_bandwidth, "results": results},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
