"""The embedded demo model: what `gemma-server` serves when no checkpoint is given.

A tiny Gemma 3 shaped model with random weights (it talks nonsense, fluently) and the shipped
tiny tokenizer. Its weights are generated deterministically on first use into a cache
directory (`$GEMMA_SERVER_CACHE`, else `$XDG_CACHE_HOME/gemma_server`, else
`~/.cache/gemma_server`), written to a temporary folder and renamed into place so concurrent
first starts never see half a checkpoint. It needs no download and starts in seconds.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from gemma_server.model.hf_config import config_from_hf_dict
from gemma_server.model.synthetic import write_checkpoint
from gemma_server.model.tiny import DEMO

DEMO_NAME = "gemma-demo"
_VERSION = "v1"  # bump when DEMO changes, so stale caches are not reused


def cache_root() -> Path:
    explicit = os.environ.get("GEMMA_SERVER_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "gemma_server"


def demo_checkpoint_dir(root: Path | None = None) -> Path:
    """The demo checkpoint directory, written first if it does not exist yet."""
    root = root or cache_root()
    target = root / f"{DEMO_NAME}-{_VERSION}"
    if (target / "config.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=root))
    try:
        cfg = config_from_hf_dict(dict(DEMO.hf_config))
        write_checkpoint(DEMO, tmp, cfg)
        try:
            tmp.rename(target)
        except OSError:  # another process got there first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
