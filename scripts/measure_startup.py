"""Start-up time of `gemma-server serve`: process start -> `/health` 200, cold and warm.

Runs the real CLI twice on the same checkpoint with a fresh compilation cache: the first
start compiles every step shape, the second loads them from the cache. For each it prints
the wall time to ready measured from outside, and the server's own split (weights loaded,
warm-up, executables compiled vs loaded from the cache) read from its log.

    python scripts/measure_startup.py                      # the demo model
    python scripts/measure_startup.py --shape bench-150m   # scripts/bench_engine.py's checkpoint
    python scripts/measure_startup.py --checkpoint DIR --dtype bfloat16 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

WARM_UP = re.compile(r"warm-up took ([\d.]+) s: (\d+) executables compiled, (\d+) loaded")
READY = re.compile(r"ready in ([\d.]+) s \(weights ([\d.]+) s, warm-up ([\d.]+) s\)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_once(args: list[str], cache: Path, log: Path, timeout: float) -> dict[str, float]:
    port = free_port()
    began = time.monotonic()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gemma_server.cli", "serve", "--port", str(port),
             "--compilation-cache-dir", str(cache), *args],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the server exited:\n{log.read_text()}")
            if time.monotonic() - began > timeout:
                raise SystemExit(f"not ready after {timeout} s:\n{log.read_text()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        to_health = time.monotonic() - began
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    text = log.read_text()
    warm_up, ready = WARM_UP.search(text), READY.search(text)
    if not warm_up or not ready:
        raise SystemExit(f"no start-up lines in the log:\n{text}")
    return {"process_to_health_s": round(to_health, 2), "server_ready_s": float(ready.group(1)),
            "weights_s": float(ready.group(2)), "warm_up_s": float(ready.group(3)),
            "compiled": int(warm_up.group(2)), "from_cache": int(warm_up.group(3))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="checkpoint directory (default: the demo model)")
    parser.add_argument("--shape", choices=["bench-150m", "gemma-2b-shape"],
                        help="a random checkpoint of scripts/bench_engine.py (written if needed)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("serve_args", nargs="*", help="more `serve` flags (after --)")
    args = parser.parse_args()
    checkpoint = args.checkpoint
    if args.shape:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_engine import checkpoint_dir  # writes the random checkpoint once

        checkpoint = str(checkpoint_dir(argparse.Namespace(checkpoint=None, shape=args.shape)))
    serve = ["--dtype", args.dtype, *(["--checkpoint", checkpoint] if checkpoint else []),
             *args.serve_args]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "xla"
        for run in ("cold", "warm"):
            results[run] = start_once(serve, cache, Path(tmp) / f"{run}.log", args.timeout)
    print(f"checkpoint: {checkpoint or 'demo'} ({args.dtype})")
    print(f"{'start':<6} {'to /health':>11} {'weights':>8} {'warm-up':>8} {'compiled':>9} "
          f"{'cached':>7}")
    for run, r in results.items():
        print(f"{run:<6} {r['process_to_health_s']:>10.1f}s {r['weights_s']:>7.1f}s "
              f"{r['warm_up_s']:>7.1f}s {r['compiled']:>9} {r['from_cache']:>7}")
    if args.json:
        Path(args.json).write_text(json.dumps({"checkpoint": checkpoint, "dtype": args.dtype,
                                               **results}, indent=2))


if __name__ == "__main__":
    main()
