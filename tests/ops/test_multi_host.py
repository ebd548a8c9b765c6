"""A two-host slice, simulated: two `gemma-server serve` processes with 2 CPU devices each
join through `jax.distributed` (CPU collectives over gloo) and serve one model split over the
4 devices. Process 0 serves HTTP and announces each step; process 1 replays them
(engine/lockstep.py). Both exit 0 when process 0 is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from tests.ops.test_lifecycle import Server, _free_port

SLICE = ["--tensor-parallel", "4", "--num-processes", "2"]


def test_two_processes_serve_one_model_split_over_both(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    coordinator = f"127.0.0.1:{_free_port()}"
    leader = Server(tmp_path, tmp_path / "process0.log", *SLICE, "--coordinator-address",
                    coordinator, "--process-id", "0")
    follower = Server(tmp_path, tmp_path / "process1.log", *SLICE, "--coordinator-address",
                      coordinator, "--process-id", "1")
    try:
        leader.wait_ready()
        reply = httpx.post(f"{leader.url}/v1/completions", timeout=120, json={
            "model": "gemma-demo", "prompt": "Hi", "max_tokens": 6, "temperature": 0, "n": 2})
        assert reply.status_code == 200, reply.text
        texts = [choice["text"] for choice in reply.json()["choices"]]
        # the same greedy text as one process on one device
        alone = subprocess.run(
            [sys.executable, "-m", "gemma_server.cli", "generate", "--raw", "--max-tokens", "6",
             "Hi"], capture_output=True, text=True, timeout=300,
            env={**os.environ, "GEMMA_SERVER_CACHE": str(tmp_path), "XLA_FLAGS": ""})
        assert alone.returncode == 0, alone.stderr[-2000:]
        assert texts == [alone.stdout.rstrip("\n")] * 2
        assert "process 0 of 2 in the slice; 4 devices in all, 2 here" in leader.log()
        assert "following process 0" in follower.log()
        with pytest.raises(httpx.TransportError):  # process 1 serves no HTTP
            httpx.get(f"http://127.0.0.1:{follower.port}/health", timeout=5)
        leader.process.send_signal(signal.SIGTERM)
        assert leader.process.wait(timeout=60) == 0
        assert follower.process.wait(timeout=60) == 0, follower.log()
        assert "process 0 stopped: exiting" in follower.log()
    finally:
        leader.stop()
        follower.stop()
