"""Presets and the reader of HF config.json in its legacy and transformers-5 dialects."""

from __future__ import annotations

import json

import pytest

from gemma_server.errors import ConfigurationError
from gemma_server.model.config import PRESETS, GemmaConfig, preset
from gemma_server.model.hf_config import config_from_hf_dict, load_hf_config

# Verbatim shape of google/gemma-2b-it's config.json (legacy format).
GEMMA_2B_IT = {
    "architectures": ["GemmaForCausalLM"], "bos_token_id": 2, "eos_token_id": 1,
    "head_dim": 256, "hidden_act": "gelu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 16384, "max_position_embeddings": 8192, "model_type": "gemma",
    "num_attention_heads": 8, "num_hidden_layers": 18, "num_key_value_heads": 1,
    "pad_token_id": 0, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 10000.0,
    "torch_dtype": "bfloat16", "transformers_version": "4.38.0.dev0", "use_cache": True,
    "vocab_size": 256000,
}
GEMMA_2_27B = {
    "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
    "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "head_dim": 128,
    "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 4608, "intermediate_size": 36864,
    "num_attention_heads": 32, "num_hidden_layers": 46, "num_key_value_heads": 16,
    "query_pre_attn_scalar": 144, "rope_theta": 10000.0, "sliding_window": 4096,
    "cache_implementation": "hybrid", "vocab_size": 256000, "max_position_embeddings": 8192,
}
GEMMA_3_1B = {
    "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "head_dim": 256,
    "hidden_size": 1152, "intermediate_size": 6912, "num_attention_heads": 4,
    "num_hidden_layers": 26, "num_key_value_heads": 1, "query_pre_attn_scalar": 256,
    "rope_local_base_freq": 10000, "rope_scaling": None, "rope_theta": 1000000,
    "sliding_window": 512, "sliding_window_pattern": 6, "vocab_size": 262144,
    "max_position_embeddings": 32768, "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
}
# Gemma 3 4B multimodal (legacy): text parameters under text_config, many left to defaults.
GEMMA_3_4B = {
    "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
    "boi_token_index": 255999, "eoi_token_index": 256000, "image_token_index": 262144,
    "mm_tokens_per_image": 256,
    "text_config": {
        "hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
        "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "sliding_window": 1024,
    },
    "vision_config": {"model_type": "siglip_vision_model"},
}


@pytest.mark.parametrize("raw, name", [
    (GEMMA_2B_IT, "gemma-2b"), (GEMMA_2_27B, "gemma-2-27b"), (GEMMA_3_1B, "gemma-3-1b"),
    (GEMMA_3_4B, "gemma-3-4b"),
])
def test_released_configs_parse_to_their_presets(raw, name):
    assert config_from_hf_dict(raw) == preset(name)


def test_transformers5_format_parses_like_legacy():
    v5 = {k: v for k, v in GEMMA_3_4B["text_config"].items() if k != "rope_scaling"}
    v5.update({
        "model_type": "gemma3_text", "vocab_size": 262208, "head_dim": 256,
        "num_attention_heads": 8, "num_key_value_heads": 4,
        "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                        for i in range(34)],
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        },
    })
    assert config_from_hf_dict(v5) == preset("gemma-3-4b")


def test_presets_cover_every_released_size_and_are_hashable():
    assert set(PRESETS) == {"gemma-2b", "gemma-7b", "gemma-2-2b", "gemma-2-9b", "gemma-2-27b",
                            "gemma-3-1b", "gemma-3-4b", "gemma-3-12b", "gemma-3-27b"}
    assert len({hash(cfg) for cfg in PRESETS.values()}) == len(PRESETS)
    with pytest.raises(AttributeError):
        preset("gemma-2b").hidden_size = 1  # type: ignore[misc]


@pytest.mark.parametrize("name, billions", [
    ("gemma-2b", 2.51), ("gemma-7b", 8.54), ("gemma-2-2b", 2.61), ("gemma-2-9b", 9.24),
    ("gemma-2-27b", 27.2), ("gemma-3-1b", 1.00), ("gemma-3-4b", 3.88), ("gemma-3-12b", 11.8),
    ("gemma-3-27b", 27.0),
])
def test_preset_parameter_counts_match_published_sizes(name, billions):
    assert abs(preset(name).num_params() / 1e9 - billions) < 0.06


def test_layer_patterns_and_scales():
    g2, g3 = preset("gemma-2-9b"), preset("gemma-3-1b")
    assert g2.layer_types[:4] == ("sliding", "global", "sliding", "global")
    assert [i for i, t in enumerate(g3.layer_types) if t == "global"] == [5, 11, 17, 23]
    assert g3.layer_types[24:] == ("sliding", "sliding")
    assert preset("gemma-2-27b").attn_scale == pytest.approx(144 ** -0.5)
    assert preset("gemma-7b").attn_scale == pytest.approx(256 ** -0.5)
    assert preset("gemma-3-12b").rope_for_layer(5) == (1e6, 8.0)
    assert preset("gemma-3-12b").rope_for_layer(0) == (1e4, 1.0)


@pytest.mark.parametrize("change, field", [
    ({"model_type": "llama"}, "model_type"),
    ({"hidden_act": "silu"}, "hidden_act"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type"),
    ({"layer_types": ["full_attention"]}, "layer_types"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
])
def test_bad_configs_fail_naming_the_field(change, field):
    with pytest.raises(ConfigurationError, match=field):
        config_from_hf_dict({**GEMMA_2B_IT, **change})


def test_load_hf_config_reads_a_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(GEMMA_3_1B))
    assert load_hf_config(tmp_path) == preset("gemma-3-1b")
    with pytest.raises(ConfigurationError, match="config.json not found"):
        load_hf_config(tmp_path / "nowhere")


def test_cache_length_uses_a_ring_for_sliding_layers():
    cfg: GemmaConfig = preset("gemma-3-1b")
    assert cfg.cache_length(0, 2048) == 512
    assert cfg.cache_length(5, 2048) == 2048
    assert cfg.cache_length(0, 100) == 100
