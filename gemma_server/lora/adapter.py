"""Load one PEFT LoRA adapter (`adapter_config.json` + `adapter_model.safetensors`) for a base.

Everything is checked against the base model before any device memory is touched, and every
refusal names the file and the problem: missing files, a non-LoRA `peft_type`, DoRA,
`modules_to_save`, bias terms, transposed (`fan_in_fan_out`) storage, target modules outside
q/k/v/o/gate/up/down, a rank over the configured maximum, tensors naming layers the base model
does not have, and shapes that do not fit. Scaling follows PEFT: `lora_alpha / r`, or
`lora_alpha / sqrt(r)` with `use_rslora`, per module after `rank_pattern` / `alpha_pattern`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from gemma_server.errors import ConfigurationError
from gemma_server.model.config import GemmaConfig

# Our projection names and their PEFT module names.
TARGETS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
           "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
           "down": "mlp.down_proj"}
_ALLOWED = {module.split(".")[-1] for module in TARGETS.values()}
_BY_MODULE = {module: name for name, module in TARGETS.items()}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_PREFIXES = ("base_model.model.model.language_model.", "base_model.model.language_model.model.",
             "base_model.model.model.", "base_model.model.")
_TENSOR = re.compile(r"^layers\.(\d+)\.((?:self_attn|mlp)\.\w+)\.lora_([AB])\.weight$")


@dataclasses.dataclass(frozen=True)
class LoraAdapter:
    """Per (layer, target): A as [in, r] and B * scaling as [r, out], in float32."""

    name: str
    path: Path
    rank: int  # the largest rank of any module
    weights: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]


def validate_name(name: str) -> str:
    if not _NAME.match(name) or ".." in name:
        raise ConfigurationError(
            f"adapter name {name!r} is not allowed: use letters, digits, '_', '-' and '.' "
            "(no path separators, no '..')")
    return name


def projection_shape(cfg: GemmaConfig, target: str) -> tuple[int, int]:
    """(in, out) features of one projection of the base model."""
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    return {"q": (d, cfg.num_heads * hd), "k": (d, cfg.num_kv_heads * hd),
            "v": (d, cfg.num_kv_heads * hd), "o": (cfg.num_heads * hd, d),
            "gate": (d, f), "up": (d, f), "down": (f, d)}[target]


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rule: the first pattern whose regex matches the end of the module name."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _read_config(path: Path) -> dict[str, Any]:
    config_file = path / "adapter_config.json"
    if not config_file.exists():
        raise ConfigurationError(f"{config_file}: missing (a PEFT adapter needs "
                                 "adapter_config.json and adapter_model.safetensors)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{config_file}: not valid JSON ({exc})") from None
    problems = [
        (config.get("peft_type", "LORA") != "LORA",
         f"peft_type is {config.get('peft_type')!r}; only LORA is supported"),
        (bool(config.get("use_dora")), "use_dora is true; DoRA adapters are not supported"),
        (bool(config.get("modules_to_save")),
         f"modules_to_save {config.get('modules_to_save')} is not supported (it replaces "
         "whole modules of the base model)"),
        (config.get("bias", "none") != "none", f"bias {config.get('bias')!r} is not supported"),
        (bool(config.get("fan_in_fan_out")), "fan_in_fan_out is true; not supported"),
        (bool(config.get("lora_bias")), "lora_bias is true; bias terms are not supported"),
        (bool(config.get("trainable_token_indices")),
         "trainable_token_indices is set; adapters that change embeddings are not supported"),
        (bool(config.get("target_parameters")), "target_parameters is not supported"),
        (bool(config.get("layer_replication")), "layer_replication is not supported"),
    ]
    for bad, message in problems:
        if bad:
            raise ConfigurationError(f"{config_file}: {message}")
    targets = config.get("target_modules") or []
    if isinstance(targets, list):
        unknown = sorted(t for t in targets if t.split(".")[-1] not in _ALLOWED)
        if unknown:
            raise ConfigurationError(
                f"{config_file}: target_modules {unknown} are not supported; allowed: "
                f"{', '.join(sorted(_ALLOWED))}")
    return dict(config)


def load_adapter(name: str, path: str | Path, cfg: GemmaConfig, max_rank: int = 32) -> \
        LoraAdapter:
    validate_name(name)
    path = Path(path)
    if not path.is_dir():
        raise ConfigurationError(f"{path}: adapter directory not found")
    config = _read_config(path)
    weights_file = path / "adapter_model.safetensors"
    if not weights_file.exists():
        hint = " (adapter_model.bin is not supported: convert it to safetensors)" \
            if (path / "adapter_model.bin").exists() else ""
        raise ConfigurationError(f"{weights_file}: missing{hint}")
    tensors = _read_tensors(weights_file, cfg)
    weights, top_rank = {}, 0
    r_default, alpha_default = int(config.get("r", 8)), float(config.get("lora_alpha", 8))
    for (layer, target), parts in sorted(tensors.items()):
        if set(parts) != {"A", "B"}:
            raise ConfigurationError(f"{weights_file}: layer {layer} {TARGETS[target]} has "
                                     f"lora_{''.join(sorted(parts))} without its pair")
        module = f"model.layers.{layer}.{TARGETS[target]}"
        rank = int(_pattern_value(config.get("rank_pattern") or {}, module, r_default))
        alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module, alpha_default))
        if rank > max_rank:
            raise ConfigurationError(f"{path}: rank {rank} of {module} exceeds the maximum "
                                     f"LoRA rank {max_rank} (--max-lora-rank)")
        a, b = parts["A"], parts["B"]
        fan_in, fan_out = projection_shape(cfg, target)
        if a.shape != (rank, fan_in) or b.shape != (fan_out, rank):
            raise ConfigurationError(
                f"{weights_file}: {module} lora_A {list(a.shape)} / lora_B {list(b.shape)} do "
                f"not fit rank {rank} and the base model's [{fan_out}, {fan_in}] projection")
        scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        weights[(layer, target)] = (np.ascontiguousarray(a.T),
                                    np.ascontiguousarray(b.T * np.float32(scaling)))
        top_rank = max(top_rank, rank)
    if not weights:
        raise ConfigurationError(f"{weights_file}: no LoRA tensors found")
    return LoraAdapter(name, path, top_rank, weights)


def _read_tensors(file: Path, cfg: GemmaConfig) -> dict[tuple[int, str], dict[str, np.ndarray]]:
    out: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    try:
        # numpy, not flax: the flax reader's device transfers compile once per tensor shape,
        # which after warm-up (a runtime adapter load) would count as stray compilations
        handle = safe_open(file, framework="numpy")
    except Exception as exc:
        raise ConfigurationError(f"{file}: not a readable safetensors file ({exc})") from None
    with handle as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            stripped = next((key[len(p):] for p in _PREFIXES if key.startswith(p)), key)
            match = _TENSOR.match(stripped)
            if match is None:
                raise ConfigurationError(f"{file}: tensor {key} is not a LoRA weight of a "
                                         "q/k/v/o/gate/up/down projection")
            layer, module, part = int(match.group(1)), match.group(2), match.group(3)
            if module not in _BY_MODULE:
                raise ConfigurationError(f"{file}: tensor {key} targets {module}, which is "
                                         "not supported")
            if layer >= cfg.num_layers:
                raise ConfigurationError(f"{file}: tensor {key} names layer {layer}, but the "
                                         f"base model has {cfg.num_layers} layers")
            value = f.get_tensor(key).astype(np.float32)  # bf16 via ml_dtypes; host only
            out.setdefault((layer, _BY_MODULE[module]), {})[part] = value
    return out
