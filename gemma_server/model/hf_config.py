"""Read a Hugging Face `config.json` into a `GemmaConfig`.

Both formats on the Hub are accepted: the legacy one every released checkpoint uses
(`rope_theta`, `rope_scaling`, `rope_local_base_freq`, `sliding_window_pattern`, no
`layer_types`) and the one transformers >= 4.53 / 5 writes (`layer_types`,
`rope_parameters` per layer type). Missing keys take transformers' defaults for that
`model_type`, so a config means here what it means there. Anything we cannot serve faithfully
fails with a `ConfigurationError` naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gemma_server.errors import ConfigurationError
from gemma_server.model.config import (
    Family,
    GemmaConfig,
    LayerType,
    all_global,
    gemma2_layer_types,
    gemma3_layer_types,
)

_FAMILY_OF_MODEL_TYPE: dict[str, Family] = {
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
}

# transformers' defaults per model_type (GemmaConfig, Gemma2Config, Gemma3TextConfig).
_DEFAULTS: dict[Family, dict[str, Any]] = {
    "gemma": dict(
        vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=16, head_dim=256,
        max_position_embeddings=8192, rope_theta=10000.0,
    ),
    "gemma2": dict(
        vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
        sliding_window=4096, max_position_embeddings=8192, rope_theta=10000.0,
        attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
    ),
    "gemma3": dict(
        vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
        sliding_window=4096, max_position_embeddings=131072, rope_theta=1_000_000.0,
        rope_local_base_freq=10000.0, attn_logit_softcapping=None,
        final_logit_softcapping=None,
    ),
}

_TANH_GELU_NAMES = {"gelu", "gelu_pytorch_tanh", "gelu_new", "gelu_fast"}
_LAYER_TYPE_NAMES: dict[str, LayerType] = {
    "sliding_attention": "sliding",
    "full_attention": "global",
}


def load_hf_config(path: str | Path) -> GemmaConfig:
    """Parse `config.json` (a file, or a checkpoint directory that holds one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigurationError(f"{path}: config.json not found") from None
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid JSON ({exc})") from None
    return config_from_hf_dict(raw, source=str(path))


def config_from_hf_dict(raw: dict[str, Any], source: str = "config.json") -> GemmaConfig:
    model_type = raw.get("model_type")
    tie = raw.get("tie_word_embeddings", True)
    if model_type == "gemma3":
        text = raw.get("text_config") or {}
        raw = {"model_type": "gemma3_text", **text}
        tie = text.get("tie_word_embeddings", tie)
        model_type = "gemma3_text"
    if model_type not in _FAMILY_OF_MODEL_TYPE:
        raise ConfigurationError(
            f"{source}: unsupported model_type {model_type!r}; "
            "supported: gemma, gemma2, gemma3_text, gemma3"
        )
    family = _FAMILY_OF_MODEL_TYPE[model_type]
    cfg = {**_DEFAULTS[family], **{k: v for k, v in raw.items() if v is not None or k in (
        "attn_logit_softcapping", "final_logit_softcapping", "rope_scaling")}}
    _check_activation(cfg, source)
    layers = int(cfg["num_hidden_layers"])
    layer_types = _layer_types(cfg, family, layers, source)
    theta_global, theta_local, scale_global = _rope(cfg, family, source)
    try:
        return GemmaConfig(
            family=family,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=int(cfg["hidden_size"]),
            num_layers=layers,
            num_heads=int(cfg["num_attention_heads"]),
            num_kv_heads=int(cfg["num_key_value_heads"]),
            head_dim=int(cfg["head_dim"]),
            intermediate_size=int(cfg["intermediate_size"]),
            layer_types=layer_types,
            sliding_window=int(cfg["sliding_window"]) if "sliding" in layer_types else None,
            rope_theta_global=theta_global,
            rope_theta_local=theta_local,
            rope_scale_global=scale_global,
            query_pre_attn_scalar=_optional_float(cfg.get("query_pre_attn_scalar"))
            if family != "gemma" else None,
            attn_logit_softcap=_optional_float(cfg.get("attn_logit_softcapping")),
            final_logit_softcap=_optional_float(cfg.get("final_logit_softcapping")),
            use_post_norms=family != "gemma",
            use_qk_norm=family == "gemma3",
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(cfg["max_position_embeddings"]),
            tie_word_embeddings=bool(tie),
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigurationError(f"{source}: {exc}") from None


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _check_activation(cfg: dict[str, Any], source: str) -> None:
    # Gemma 1 configs say "gelu" but every reference runs the tanh approximation.
    for key in ("hidden_activation", "hidden_act"):
        name = cfg.get(key)
        if name is not None and name not in _TANH_GELU_NAMES:
            raise ConfigurationError(f"{source}: unsupported {key} {name!r} (Gemma uses GELU)")


def _layer_types(
    cfg: dict[str, Any], family: Family, layers: int, source: str
) -> tuple[LayerType, ...]:
    explicit = cfg.get("layer_types")
    if explicit is not None:
        try:
            types = tuple(_LAYER_TYPE_NAMES[t] for t in explicit)
        except KeyError as exc:
            raise ConfigurationError(f"{source}: unknown layer_types entry {exc}") from None
        if len(types) != layers:
            raise ConfigurationError(
                f"{source}: layer_types has {len(types)} entries, num_hidden_layers is {layers}"
            )
        return types
    if family == "gemma":
        return all_global(layers)
    if family == "gemma2":
        return gemma2_layer_types(layers)
    return gemma3_layer_types(layers, int(cfg.get("sliding_window_pattern") or 6))


def _rope(cfg: dict[str, Any], family: Family, source: str) -> tuple[float, float, float]:
    """(global theta, local theta, global linear factor) from either config format."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params:  # v5, per layer type
        full: dict[str, Any] = params["full_attention"]
        local: dict[str, Any] = params.get("sliding_attention") or full
        _check_rope_type(local, source, allow_linear=False)
        return (
            float(full["rope_theta"]), float(local["rope_theta"]),
            _check_rope_type(full, source, allow_linear=True),
        )
    if isinstance(params, dict) and "rope_theta" in params:  # v5, one table
        theta = float(params["rope_theta"])
        scale = _check_rope_type(params, source, allow_linear=family == "gemma3")
        local_theta = float(cfg.get("rope_local_base_freq", theta)) if family == "gemma3" else theta
        return theta, local_theta, scale
    theta = float(cfg["rope_theta"])
    local_theta = float(cfg.get("rope_local_base_freq", theta)) if family == "gemma3" else theta
    # Legacy `rope_scaling` applies to global layers only (transformers does the same).
    scaling = cfg.get("rope_scaling")
    scale = _check_rope_type(scaling, source, allow_linear=True) if scaling else 1.0
    return theta, local_theta, scale


def _check_rope_type(params: dict[str, Any], source: str, allow_linear: bool) -> float:
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return 1.0
    if rope_type == "linear" and allow_linear:
        return float(params["factor"])
    raise ConfigurationError(f"{source}: unsupported rope_type {rope_type!r}")
