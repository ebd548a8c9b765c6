"""The embedded demo model and the `gemma-server` command, run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gemma_server.demo import demo_checkpoint_dir
from gemma_server.loading import load_model


def test_demo_checkpoint_is_deterministic_and_reused(tmp_path):
    first = demo_checkpoint_dir(tmp_path / "a")
    second = demo_checkpoint_dir(tmp_path / "b")
    for name in ("config.json", "model.safetensors", "tokenizer.model"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert demo_checkpoint_dir(tmp_path / "a") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".demo-")]


def test_demo_model_holds_the_default_limits():
    model = load_model(None, progress=False)
    assert model.name == "gemma-demo"
    assert model.checkpoint.config.max_position_embeddings >= 2048
    assert model.stop_ids == {1, 106}


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GEMMA_SERVER_CACHE": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "gemma_server.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_generate_on_the_demo_model(tmp_path):
    result = _run("generate", "--max-tokens", "12", "Hello there", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "\ufffd" not in result.stdout


def test_cli_info_and_a_clear_error_for_a_bad_checkpoint(tmp_path):
    info = _run("info", tmp_path=tmp_path)
    assert info.returncode == 0, info.stderr
    assert "name: gemma-demo" in info.stdout and "family: gemma3" in info.stdout
    bad = _run("info", "--checkpoint", str(tmp_path / "missing"), tmp_path=tmp_path)
    assert bad.returncode == 2
    assert "no such checkpoint directory" in bad.stderr
    f16 = _run("generate", "--dtype", "float16", "hi", tmp_path=tmp_path)
    assert f16.returncode == 2 and "float16 is not supported" in f16.stderr
