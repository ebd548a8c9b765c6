"""The server process as an operator sees it: start-up (cold, then with a warm compilation
cache), SIGTERM drain, and exit status when the engine loop dies. Real `gemma-server serve`
processes on the demo model, sharing one cache folder (demo weights + compiled executables)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

SMALL = ["--max-total-tokens", "512", "--max-input-length", "200",
         "--max-batch-prefill-tokens", "64", "--max-batch-size", "2"]
WARM_UP = re.compile(r"warm-up took ([\d.]+) s: (\d+) executables compiled, (\d+) loaded")
READY = re.compile(r"ready in ([\d.]+) s \(weights ([\d.]+) s, warm-up ([\d.]+) s\)")

# A slower model (30 ms a decode step), so that a drain has requests in flight long enough
# to be watched, whatever the speed of the machine.
SLOW_ENGINE = """
import sys, time
from gemma_server.engine.executor import Executor
fast = Executor.launch_decode
def launch_decode(self, tokens, positions, budgets=None):
    time.sleep(0.03 * (1 if budgets is None else int(budgets.max())))  # 30 ms a step
    return fast(self, tokens, positions, budgets)
Executor.launch_decode = launch_decode
from gemma_server.cli import main
sys.exit(main(sys.argv[1:]))
"""

# Kills the engine loop from inside (a BaseException escapes every step's error handling),
# the way a bug in the loop itself would, then runs the real CLI.
DYING_ENGINE = """
import sys
from gemma_server.engine.executor import Executor
class LoopBug(BaseException):
    pass
def launch_decode(self, *args):
    raise LoopBug("simulated bug in the engine loop")
Executor.launch_decode = launch_decode
from gemma_server.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A `gemma-server serve` process; its log goes to a file (a full pipe would block it)."""

    def __init__(self, cache: Path, log: Path, *args: str, script: str | None = None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        env = {**os.environ, "GEMMA_SERVER_CACHE": str(cache)}
        command = [sys.executable, "-c", script] if script else \
            [sys.executable, "-m", "gemma_server.cli"]
        self.started = time.monotonic()
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [*command, "serve", "--port", str(self.port), *SMALL, *args], env=env,
                stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300) -> float:
        """Seconds from process start to `/health` 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return time.monotonic() - self.started
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gemma-cache")


@pytest.fixture(scope="module")
def cold_start(cache, tmp_path_factory) -> tuple[float, str]:
    """The first start on an empty cache (compiles everything); its time and log."""
    server = Server(cache, tmp_path_factory.mktemp("cold") / "server.log")
    try:
        seconds = server.wait_ready()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
    finally:
        server.stop()
    return seconds, server.log()


@pytest.fixture
def warm_server(cache, cold_start, tmp_path) -> Iterator[Server]:
    server = Server(cache, tmp_path / "server.log", "--shutdown-timeout", "30",
                    script=SLOW_ENGINE)
    server.wait_ready()
    yield server
    server.stop()


def test_cold_start_compiles_and_reports_its_time(cold_start):
    seconds, log = cold_start
    warm_up, ready = WARM_UP.search(log), READY.search(log)
    assert warm_up and ready, log
    assert int(warm_up.group(2)) > 0 and int(warm_up.group(3)) == 0  # all compiled
    assert float(ready.group(1)) <= seconds


def test_second_start_compiles_nothing(cold_start, warm_server):
    warm_up = WARM_UP.search(warm_server.log())
    assert warm_up, warm_server.log()
    compiled, loaded = int(warm_up.group(2)), int(warm_up.group(3))
    assert compiled == 0 and loaded == int(WARM_UP.search(cold_start[1]).group(2))
    reply = httpx.post(f"{warm_server.url}/v1/completions", timeout=60, json={
        "model": "gemma-demo", "prompt": "Hi", "max_tokens": 4, "n": 2, "logprobs": 2})
    assert reply.status_code == 200
    metrics = httpx.get(f"{warm_server.url}/metrics").text
    assert "gemma_server_compilations_after_warm_up_total 0.0" in metrics


def _stream(url: str, max_tokens: int, events: list[str], opened: threading.Event) -> None:
    body = {"model": "gemma-demo", "prompt": "Once upon a time", "max_tokens": max_tokens,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                opened.set()


def test_sigterm_drains_in_flight_requests_and_exits_zero(warm_server):
    events: list[str] = []
    opened = threading.Event()
    client = threading.Thread(target=_stream, args=(warm_server.url, 120, events, opened))
    client.start()
    assert opened.wait(60)
    warm_server.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    refused = httpx.post(f"{warm_server.url}/v1/completions", timeout=10,
                         json={"model": "gemma-demo", "prompt": "Hi", "max_tokens": 2})
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert refused.json()["error"]["code"] == "server_shutting_down"
    workers = httpx.post(f"{warm_server.url}/ai/run/gemma-demo", json={"prompt": "Hi"},
                         timeout=10)
    assert workers.status_code == 503 and workers.json()["success"] is False
    health = httpx.get(f"{warm_server.url}/health", timeout=10)
    assert health.status_code == 503 and health.json()["status"] == "draining"
    client.join(60)
    assert events[-1] == "[DONE]"  # the in-flight stream ran to its end
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 120
    assert warm_server.process.wait(timeout=30) == 0
    assert "drained: every request finished" in warm_server.log()


def test_drain_timeout_aborts_the_rest_with_an_error_event(cache, cold_start, tmp_path):
    server = Server(cache, tmp_path / "server.log", "--shutdown-timeout", "1",
                    script=SLOW_ENGINE)
    try:
        server.wait_ready()
        events: list[str] = []
        opened = threading.Event()
        client = threading.Thread(target=_stream, args=(server.url, 300, events, opened))
        client.start()
        assert opened.wait(60)
        began = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        client.join(60)
        assert server.process.wait(timeout=30) == 0
        assert time.monotonic() - began < 15
        last = json.loads(events[-1])
        assert "shutting down" in last["error"]["message"]
        assert "[DONE]" not in events
    finally:
        server.stop()


def test_engine_loop_death_exits_non_zero(cache, cold_start, tmp_path):
    server = Server(cache, tmp_path / "server.log", script=DYING_ENGINE)
    try:
        server.wait_ready()
        reply = httpx.post(f"{server.url}/v1/completions", timeout=60,
                           json={"model": "gemma-demo", "prompt": "Hi", "max_tokens": 4})
        assert reply.status_code == 500 and "engine" in reply.json()["error"]["message"]
        assert server.process.wait(timeout=30) == 1
        assert "the engine loop died" in server.log()
    finally:
        server.stop()
