"""`gemma-server serve --tensor-parallel N` as a user runs it (2 host CPU devices), and the
start-up refusals of the memory planner and the mesh, each naming its numbers."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from tests.ops.test_lifecycle import SMALL, Server

TWO_DEVICES = "--xla_force_host_platform_device_count=2"


def test_serves_sharded_over_two_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", TWO_DEVICES)
    server = Server(tmp_path, tmp_path / "server.log", "--tensor-parallel", "2")
    try:
        server.wait_ready()
        reply = httpx.post(f"{server.url}/v1/completions", timeout=60, json={
            "model": "gemma-demo", "prompt": "Hi", "max_tokens": 6, "temperature": 0})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 6
        log = server.log()
        assert "memory plan (tensor parallel 2" in log and "per device weights" in log
        assert "over 2 devices" in log and "XLA, tensor parallel" in log
        metrics = httpx.get(f"{server.url}/metrics").text
        assert "gemma_server_compilations_after_warm_up_total 0.0" in metrics
    finally:
        server.stop()


def _serve(tmp_path, *args: str, devices: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "GEMMA_SERVER_CACHE": str(tmp_path),
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.run([sys.executable, "-m", "gemma_server.cli", "serve", *SMALL, *args],
                          env=env, capture_output=True, text=True, timeout=120)


def test_heads_must_divide_evenly(tmp_path):
    run = _serve(tmp_path, "--tensor-parallel", "3", devices=4)
    assert run.returncode == 2
    assert "--tensor-parallel 3" in run.stderr and "4 attention heads" in run.stderr


def test_more_devices_than_there_are_is_refused(tmp_path):
    run = _serve(tmp_path, "--tensor-parallel", "4", devices=2)
    assert run.returncode == 2 and "only 2 device(s)" in run.stderr


def test_a_plan_that_cannot_fit_is_refused_with_its_numbers(tmp_path):
    # the demo needs ~0.03 GiB; allowed one millionth of the machine's memory, it cannot fit
    run = _serve(tmp_path, "--memory-utilization", "0.000001")
    assert run.returncode == 2, run.stderr
    assert "KV cache" in run.stderr and "GiB" in run.stderr and "usable" in run.stderr


def test_serves_two_replicas_on_two_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", TWO_DEVICES)
    server = Server(tmp_path, tmp_path / "server.log", "--data-parallel", "2")
    try:
        server.wait_ready()
        body = {"model": "gemma-demo", "prompt": "Hi", "max_tokens": 5, "temperature": 0}
        with httpx.Client(timeout=60) as client:
            replies = [client.post(f"{server.url}/v1/completions", json=body) for _ in range(3)]
        assert all(r.status_code == 200 for r in replies)
        assert len({r.json()["choices"][0]["text"] for r in replies}) == 1  # same model
        assert "in each of 2 replicas" in server.log()
        metrics = httpx.get(f"{server.url}/metrics").text
        assert "gemma_server_kv_slots_total 4.0" in metrics  # 2 replicas x 2 slots
        assert "gemma_server_compilations_after_warm_up_total 0.0" in metrics
    finally:
        server.stop()


def test_tensor_and_data_parallel_together_are_refused(tmp_path):
    run = _serve(tmp_path, "--tensor-parallel", "2", "--data-parallel", "2", devices=4)
    assert run.returncode == 2 and "cannot be combined" in run.stderr
