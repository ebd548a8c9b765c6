"""The tiny checkpoints the tests use, and the embedded demo model.

Each tiny model is chosen to make a classic porting bug visible in its logits: MQA and GQA,
head_dim != hidden / heads, query_pre_attn_scalar != head_dim, a sliding window (8) shorter
than the test prompts, soft-caps small enough to bite on random weights, random (non-zero)
norm offsets, Gemma 3's dual RoPE bases with linear scaling on the global layer, an untied
head (tiny-gemma2), and a vocabulary larger than the tokenizer (tiny-gemma3, like the real
Gemma 3 4B+). The three configs use the three config dialects a loader must read: the legacy
Hub format (gemma, gemma2) and the transformers-5 format (gemma3_text).
"""

from __future__ import annotations

from gemma_server.model.synthetic import (
    GEMMA2_LAYOUT_TOKENIZER,
    GEMMA3_LAYOUT_TOKENIZER,
    SyntheticSpec,
)

TOKENIZER_VOCAB = 640  # pieces in the tiny SentencePiece models

TINY_GEMMA = SyntheticSpec(
    name="tiny-gemma",
    tokenizer=GEMMA2_LAYOUT_TOKENIZER,
    eos_token_id=(1,),
    embed_std=0.3,
    hf_config={
        "architectures": ["GemmaForCausalLM"],
        "model_type": "gemma",
        "vocab_size": TOKENIZER_VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "hidden_act": "gelu",
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
        "torch_dtype": "float32",
    },
)

TINY_GEMMA2 = SyntheticSpec(
    name="tiny-gemma2",
    tokenizer=GEMMA2_LAYOUT_TOKENIZER,
    eos_token_id=(1, 107),
    seed=4,
    hf_config={
        "architectures": ["Gemma2ForCausalLM"],
        "model_type": "gemma2",
        "vocab_size": TOKENIZER_VOCAB,
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 24,
        "query_pre_attn_scalar": 32,
        "sliding_window": 8,
        "attn_logit_softcapping": 3.0,
        "final_logit_softcapping": 10.0,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "cache_implementation": "hybrid",
        "bos_token_id": 2,
        "eos_token_id": [1, 107],
        "pad_token_id": 0,
        "torch_dtype": "float32",
    },
)

_GEMMA3_LAYERS = 7  # layers 0-4 local, 5 global, 6 local again


def _gemma3_text_config(vocab: int, hidden: int, layers: int, heads: int, kv: int,
                        head_dim: int, intermediate: int, qpas: int, window: int,
                        max_pos: int) -> dict[str, object]:
    """A transformers-5 style `gemma3_text` config (explicit layer_types, rope_parameters)."""
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "query_pre_attn_scalar": qpas,
        "sliding_window": window,
        "layer_types": [
            "full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)
        ],
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
        },
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": max_pos,
        "rms_norm_eps": 1e-6,
        "bos_token_id": 2,
        "eos_token_id": [1, 106],
        "pad_token_id": 0,
        "dtype": "float32",
    }


TINY_GEMMA3 = SyntheticSpec(
    name="tiny-gemma3",
    tokenizer=GEMMA3_LAYOUT_TOKENIZER,
    eos_token_id=(1, 106),
    seed=4,
    embed_std=0.25,
    hf_config=_gemma3_text_config(
        vocab=TOKENIZER_VOCAB + 64, hidden=64, layers=_GEMMA3_LAYERS, heads=4, kv=2,
        head_dim=32, intermediate=128, qpas=48, window=8, max_pos=32768,
    ),
)

TINY_SPECS = {spec.name: spec for spec in (TINY_GEMMA, TINY_GEMMA2, TINY_GEMMA3)}

# The embedded demo: Gemma 3 shaped, big enough to hold 8192 positions and the default
# 2048-token limits, small enough (~2M parameters) to write and start in seconds. Random
# tied-embedding models just repeat their last token, so the demo has an untied head whose
# rows for reserved and byte-fallback pieces are zero: it babbles in word pieces instead.
DEMO = SyntheticSpec(
    name="gemma-demo",
    tokenizer=GEMMA3_LAYOUT_TOKENIZER,
    eos_token_id=(1, 106),
    seed=13,
    embed_std=0.4,
    proj_std=0.1,
    norm_std=0.3,
    quiet_ids=tuple(i for i in range(363) if i not in (1, 106)),
    hf_config={
        **_gemma3_text_config(
            vocab=TOKENIZER_VOCAB, hidden=128, layers=6, heads=4, kv=1, head_dim=64,
            intermediate=512, qpas=64, window=512, max_pos=8192,
        ),
        "tie_word_embeddings": False,
    },
)
