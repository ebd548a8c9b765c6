"""Print the per-device memory plan of a model under tensor parallelism, as a markdown table.

By default Gemma 2 27B (its Hugging Face config.json values) in bfloat16 and with int8
weights, for 1, 2, 4 and 8 devices, against a 24 GiB GPU, an 80 GiB GPU (H100) and a TPU
v5e (16 GiB), with the server's default limits (8 slots x 2048 tokens). No weights are read.

    python scripts/plan_memory.py
    python scripts/plan_memory.py --checkpoint DIR --max-batch-size 16 --max-total-tokens 8192
    python scripts/plan_memory.py --device "A100 40 GiB=40" --tensor-parallel 1 2
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gemma_server.errors import ConfigurationError
from gemma_server.model.config import GemmaConfig
from gemma_server.model.hf_config import config_from_hf_dict, load_hf_config
from gemma_server.model.memory_plan import GIB, MemoryPlan, check_fits, plan_memory

# google/gemma-2-27b-it config.json, the values that shape memory (spec/gemma.md §1)
GEMMA2_27B_HF_CONFIG: dict[str, Any] = {
    "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "vocab_size": 256000,
    "hidden_size": 4608, "intermediate_size": 36864, "num_hidden_layers": 46,
    "num_attention_heads": 32, "num_key_value_heads": 16, "head_dim": 128,
    "query_pre_attn_scalar": 144, "sliding_window": 4096, "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0, "max_position_embeddings": 8192, "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh",
    "tie_word_embeddings": True, "cache_implementation": "hybrid", "torch_dtype": "bfloat16",
}

DEVICES = (("24 GiB GPU", 24 * GIB), ("80 GiB GPU (H100)", 80 * GIB), ("TPU v5e 16 GiB", 16 * GIB))


def table(cfg: GemmaConfig, dtype: str = "bfloat16", slots: int = 8,
          max_total_tokens: int = 2048, degrees: tuple[int, ...] = (1, 2, 4, 8),
          devices: tuple[tuple[str, int], ...] = DEVICES, usable_fraction: float = 0.9) -> str:
    """The markdown table: one row per (weights, tensor parallel), one fit column per device."""
    head = ["weights", "tensor parallel", "weights / device", "KV cache / device",
            "total / device", *(name for name, _ in devices)]
    rows = ["| " + " | ".join(head) + " |", "|---|--:|--:|--:|--:|" + ":-:|" * len(devices)]
    for quantize in (None, "int8"):
        label = "int8" if quantize else dtype
        for n in degrees:
            try:
                plan = plan_memory(cfg, dtype, quantize, n, slots, max_total_tokens)
            except ConfigurationError:
                cells = [f"refused: {n} does not divide {cfg.num_heads} heads", "", ""]
                rows.append(_row([label, str(n), *cells, *("—" for _ in devices)]))
                continue
            fit = [_fits(plan, size, usable_fraction) for _, size in devices]
            kv = _gib(plan.kv_cache_bytes_per_device) + (
                " (all KV heads)" if plan.kv_heads_replicated else "")
            rows.append(_row([label, str(n), _gib(plan.weights_bytes_per_device), kv,
                              _gib(plan.total_bytes_per_device), *fit]))
    return "\n".join(rows)


def _fits(plan: MemoryPlan, device_bytes: int, usable_fraction: float) -> str:
    try:
        check_fits(plan, device_bytes, usable_fraction)
    except ConfigurationError:
        return "does not fit"
    return "fits"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def _device(text: str) -> tuple[str, int]:
    name, _, gib = text.rpartition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"expected NAME=GIB, got {text!r}")
    return name, int(float(gib) * GIB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path,
                        help="plan this model (a directory with config.json); default: Gemma 2 27B")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="compute dtype: weights unless int8, and the KV cache")
    parser.add_argument("--max-batch-size", type=int, default=8, help="decode slots")
    parser.add_argument("--max-total-tokens", type=int, default=2048,
                        help="prompt + generated tokens per slot")
    parser.add_argument("--tensor-parallel", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--device", type=_device, action="append",
                        help="NAME=GIB, repeatable; replaces the default devices")
    parser.add_argument("--usable-fraction", type=float, default=0.9,
                        help="share of a device's memory the plan may fill")
    args = parser.parse_args()
    if args.checkpoint:
        cfg, name = load_hf_config(args.checkpoint), args.checkpoint.name
    else:
        cfg, name = config_from_hf_dict(GEMMA2_27B_HF_CONFIG), "google/gemma-2-27b-it"
    print(f"Memory plan of {name} ({cfg.num_params() / 1e9:.1f} B parameters), "
          f"{args.max_batch_size} slots x {args.max_total_tokens} tokens, {args.dtype} "
          f"activations and KV cache; fits = total per device at most "
          f"{args.usable_fraction:.0%} of the device (1 GiB = 2^30 bytes).\n")
    print(table(cfg, args.dtype, args.max_batch_size, args.max_total_tokens,
                tuple(args.tensor_parallel), tuple(args.device or DEVICES), args.usable_fraction))


if __name__ == "__main__":
    main()
