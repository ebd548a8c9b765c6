"""Measure peak memory while loading a ~1 GB checkpoint: it should stay near one copy.

Writes a Gemma-shaped random checkpoint (bfloat16 safetensors in 2 shards, ~1.04 GB) to a
temporary directory, then loads it in a fresh process per target dtype and prints that
process's peak RSS next to the size of the loaded parameters.

    python scripts/measure_load_memory.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

_SPEC = {
    "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "vocab_size": 32000,
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 32,
    "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 128,
    "query_pre_attn_scalar": 128, "sliding_window": 4096, "max_position_embeddings": 8192,
}

_CHILD = r"""
import json, sys, time
import jax, jax.numpy as jnp
from gemma_server.model.checkpoint import load_checkpoint

def status(field):  # bytes, from the kernel's own accounting of this process
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

jnp.zeros(1).block_until_ready()  # initialise the backend before the baseline
base = status("VmRSS")
start = time.perf_counter()
ckpt = load_checkpoint(sys.argv[1], dtype=sys.argv[2], progress=False)
seconds = time.perf_counter() - start
peak = status("VmHWM")
size = sum(x.nbytes for x in jax.tree_util.tree_leaves(ckpt.params))
print(json.dumps({"dtype": sys.argv[2], "params_bytes": size, "baseline_rss": base,
                  "peak_rss": peak, "seconds": seconds}))
"""


def write(path: Path) -> int:
    from gemma_server.model.hf_config import config_from_hf_dict
    from gemma_server.model.synthetic import SyntheticSpec, write_checkpoint

    spec = SyntheticSpec(name="mem", hf_config=_SPEC, tokenizer="tokenizer_gemma2_layout.model",
                         eos_token_id=(1, 107))
    write_checkpoint(spec, path, config_from_hf_dict(_SPEC), shards=2, dtype="bfloat16")
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", type=Path, help="write the checkpoint here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "ckpt"
        on_disk = write(path)
        print(f"checkpoint: {on_disk / 1e9:.2f} GB of bfloat16 safetensors in {path}")
        for dtype in ("bfloat16", "float32"):
            out = subprocess.run([sys.executable, "-c", _CHILD, str(path), dtype],
                                 capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            growth = r["peak_rss"] - r["baseline_rss"]
            print(f"load as {dtype:8s}: params {r['params_bytes'] / 1e9:.2f} GB, "
                  f"peak RSS growth {growth / 1e9:.2f} GB "
                  f"({growth / r['params_bytes']:.2f}x params), {r['seconds']:.1f} s")


if __name__ == "__main__":
    main()
