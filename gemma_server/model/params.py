"""The parameter tree of the decoder and how it maps onto Hugging Face tensor names.

Our layout stores every projection as `[in, out]` so the forward pass is plain `x @ W`
(HF stores PyTorch's `[out, in]`; the loader transposes once, at load time, never per step).
Shapes (glossary of STYLE.md): V vocab, D model dim, H heads, K kv heads, Hd head dim, F MLP.

    embed [V, D]   final_norm [D]   lm_head [D, V] (only when the head is not tied)
    layers[i]: attn_norm [D]  q [D, H*Hd]  k, v [D, K*Hd]  o [H*Hd, D]
               q_norm, k_norm [Hd] (Gemma 3)   post_attn_norm, post_ffw_norm [D] (Gemma 2/3)
               ffw_norm [D]  gate, up [D, F]  down [F, D]

Once loaded, projections that read the same input are fused along their output axis
(`fuse_projections`): `qkv` [D, (H+2K)*Hd] and `gate_up` [D, 2F]. One product then streams
all their weights in one pass: at decode, fewer and longer reads of memory.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from gemma_server.model.config import GemmaConfig

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One tensor of our tree: where it lives, its shape, and its HF name and orientation."""

    path: tuple[str | int, ...]
    shape: tuple[int, ...]
    hf_name: str  # without the `model.` prefix, except `lm_head.weight`
    transpose: bool  # HF stores [out, in]; we store [in, out]


def tensor_specs(cfg: GemmaConfig) -> list[TensorSpec]:
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q_out, kv_out = cfg.num_heads * hd, cfg.num_kv_heads * hd
    specs = [
        TensorSpec(("embed",), (cfg.vocab_size, d), "embed_tokens.weight", False),
        TensorSpec(("final_norm",), (d,), "norm.weight", False),
    ]
    if not cfg.tie_word_embeddings:
        specs.append(TensorSpec(("lm_head",), (d, cfg.vocab_size), "lm_head.weight", True))
    for i in range(cfg.num_layers):
        p = f"layers.{i}."

        def spec(key: str, shape: tuple[int, ...], name: str, transpose: bool = False) -> None:
            specs.append(TensorSpec(("layers", i, key), shape, p + name, transpose))  # noqa: B023

        spec("attn_norm", (d,), "input_layernorm.weight")
        spec("q", (d, q_out), "self_attn.q_proj.weight", True)
        spec("k", (d, kv_out), "self_attn.k_proj.weight", True)
        spec("v", (d, kv_out), "self_attn.v_proj.weight", True)
        spec("o", (q_out, d), "self_attn.o_proj.weight", True)
        if cfg.use_qk_norm:
            spec("q_norm", (hd,), "self_attn.q_norm.weight")
            spec("k_norm", (hd,), "self_attn.k_norm.weight")
        if cfg.use_post_norms:
            # Name trap: in Gemma 2/3 `post_attention_layernorm` normalises the attention
            # output; in Gemma 1 the same name is the pre-MLP norm.
            spec("post_attn_norm", (d,), "post_attention_layernorm.weight")
            spec("ffw_norm", (d,), "pre_feedforward_layernorm.weight")
            spec("post_ffw_norm", (d,), "post_feedforward_layernorm.weight")
        else:
            spec("ffw_norm", (d,), "post_attention_layernorm.weight")
        spec("gate", (d, f), "mlp.gate_proj.weight", True)
        spec("up", (d, f), "mlp.up_proj.weight", True)
        spec("down", (f, d), "mlp.down_proj.weight", True)
    return specs


# fused name -> the projections it holds, in column order
FUSED = {"qkv": ("q", "k", "v"), "gate_up": ("gate", "up")}


def fused_sizes(cfg: GemmaConfig, fused: str) -> tuple[int, ...]:
    """Output widths of the parts of a fused projection, in column order."""
    if fused == "qkv":
        kv = cfg.num_kv_heads * cfg.head_dim
        return cfg.num_heads * cfg.head_dim, kv, kv
    return cfg.intermediate_size, cfg.intermediate_size


def empty_tree(cfg: GemmaConfig) -> Params:
    """The nested containers our tree uses, ready to be filled by `set_leaf`."""
    return {"layers": [dict() for _ in range(cfg.num_layers)]}


def set_leaf(tree: Params, path: tuple[str | int, ...], value: Any) -> None:
    node: Any = tree
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def freeze(tree: Params) -> Params:
    """Layers as a tuple: the tree's structure is then fixed and hashable for jit caching."""
    return {**tree, "layers": tuple(tree["layers"])}


def compute_dtype(params: Params) -> jnp.dtype:
    """The dtype activations and the KV cache use: the norms' (never quantized)."""
    return jnp.dtype(params["final_norm"].dtype)
