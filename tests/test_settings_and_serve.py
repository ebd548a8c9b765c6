"""Settings precedence and the `gemma-server serve` process, run as a user would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gemma_server.errors import ConfigurationError
from gemma_server.settings import load_settings


def test_precedence_cli_over_env_over_file(tmp_path, monkeypatch):
    config = tmp_path / "s.toml"
    config.write_text('port = 6000\nmax-batch-size = 3\nserved_model_name = ["a", "b"]\n')
    assert load_settings({}, config).port == 6000
    monkeypatch.setenv("GEMMA_SERVER_PORT", "7000")
    monkeypatch.setenv("GEMMA_SERVER_API_KEY", "k1,k2")
    settings = load_settings({}, config)
    assert (settings.port, settings.max_batch_size) == (7000, 3)
    assert settings.api_key == ["k1", "k2"] and settings.served_model_name == ["a", "b"]
    assert load_settings({"port": 9000}, config).port == 9000
    yaml_file = tmp_path / "s.yaml"
    yaml_file.write_text("max-total-tokens: 4096\nmax_input_length: 4000\n")
    assert load_settings({}, yaml_file).max_total_tokens == 4096


@pytest.mark.parametrize("cli, fragment", [
    ({"max_input_length": 3000}, "max_input_length (3000) must be < max_total_tokens (2048)"),
    ({"port": 70000}, "port"),
    ({"bogus": 1}, "bogus"),
])
def test_inconsistent_settings_are_refused_clearly(cli, fragment):
    with pytest.raises(ConfigurationError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_settings(cli)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SMALL = ["--max-total-tokens", "256", "--max-input-length", "200",
         "--max-batch-prefill-tokens", "64", "--max-batch-size", "2"]


def test_serve_answers_503_then_200_and_serves_the_demo(tmp_path):
    port = _free_port()
    env = {**os.environ, "GEMMA_SERVER_CACHE": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "gemma_server.cli", "serve", "--port", str(port), *SMALL,
         "--api-key", "secret"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url, statuses = f"http://127.0.0.1:{port}", []
        deadline = time.time() + 240
        while time.time() < deadline:
            try:
                statuses.append(httpx.get(f"{url}/health", timeout=5).status_code)
            except httpx.TransportError:
                statuses.append(0)
            if statuses[-1] == 200:
                break
            time.sleep(0.2)
        assert statuses[-1] == 200 and 503 in statuses
        reply = httpx.post(f"{url}/ai/run/gemma-demo", content=b'{"prompt": "Hi", "max_tokens": 8}',
                           headers={"Authorization": "Bearer secret"}, timeout=60)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode()
    assert "secret" not in output


def test_serve_refuses_a_bad_checkpoint_before_listening(tmp_path):
    run = subprocess.run([sys.executable, "-m", "gemma_server.cli", "serve", "--checkpoint",
                          str(tmp_path / "missing")], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "no such checkpoint directory" in run.stderr


def test_lora_settings_are_checked():
    with pytest.raises(ConfigurationError, match="NAME=DIR"):
        load_settings({"lora": ["just-a-path"]})
    with pytest.raises(ConfigurationError, match="needs an API key"):
        load_settings({"allow_runtime_lora": True})
    settings = load_settings({"lora": ["a=/x", "b=/y"], "allow_runtime_lora": True,
                              "api_key": ["k"]})
    assert settings.lora_sources() == [("a", "/x"), ("b", "/y")]
    assert settings.lora_capacity(2) == 6
    with pytest.raises(ConfigurationError, match="max_loras is 1"):
        load_settings({"max_loras": 1}).lora_capacity(2)


def test_serve_refuses_an_adapter_that_does_not_fit_the_model(tmp_path):
    adapter = Path(__file__).parent / "goldens" / "lora" / "attn"  # made for tiny-gemma2
    env = {**os.environ, "GEMMA_SERVER_CACHE": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "gemma_server.cli", "serve", "--lora",
                          f"tuned={adapter}"], capture_output=True, text=True, timeout=120,
                         env=env)
    assert run.returncode == 2
    assert "adapter_model.safetensors" in run.stderr and "do not fit" in run.stderr
    bad_name = subprocess.run([sys.executable, "-m", "gemma_server.cli", "serve", "--lora",
                               f"../x={adapter}"], capture_output=True, text=True, timeout=120,
                              env=env)
    assert bad_name.returncode == 2 and "is not allowed" in bad_name.stderr
