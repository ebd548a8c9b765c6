"""Write the tiny random-weight Gemma checkpoints (HF format) used by tests, or the demo model.

    python scripts/make_tiny_checkpoint.py OUT_DIR [--name tiny-gemma2 ...] [--shards N]
        [--dtype float32|bfloat16]

Each name becomes OUT_DIR/<name>: config.json, model.safetensors (or shards and an index),
generation_config.json, tokenizer.model and tokenizer_config.json. The weights are seeded per
tensor name, so the files are identical on every machine. Names: tiny-gemma, tiny-gemma2,
tiny-gemma3, gemma-demo.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gemma_server.model.hf_config import config_from_hf_dict
from gemma_server.model.synthetic import write_checkpoint
from gemma_server.model.tiny import DEMO, TINY_SPECS

SPECS = {**TINY_SPECS, DEMO.name: DEMO}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--name", action="append", choices=sorted(SPECS),
                        help="which checkpoint(s) to write (default: the three tiny ones)")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    for name in args.name or list(TINY_SPECS):
        spec = SPECS[name]
        cfg = config_from_hf_dict(dict(spec.hf_config))
        path = write_checkpoint(spec, args.out_dir / name, cfg, shards=args.shards,
                                dtype=args.dtype)
        print(f"wrote {path} ({cfg.family}, {cfg.num_params():,} parameters)")


if __name__ == "__main__":
    main()
