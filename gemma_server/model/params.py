"""The parameter tree of the decoder and how it maps onto Hugging Face tensor names.

Every matrix keeps Hugging Face's `[out, in]` orientation and the forward pass computes
`x @ W.T`: each output is the dot product of x with one contiguous row of W, so a decode step
reads every matrix front to back (what the CPU kernels need to stream at memory speed), the
tied head is the embedding as is, and loading never transposes.
Shapes (glossary of STYLE.md): V vocab, D model dim, H heads, K kv heads, Hd head dim, F MLP.

    embed [V, D]   final_norm [D]   lm_head [V, D] (only when the head is not tied)
    layers[i]: attn_norm [D]  q [H*Hd, D]  k, v [K*Hd, D]  o [D, H*Hd]
               q_norm, k_norm [Hd] (Gemma 3)   post_attn_norm, post_ffw_norm [D] (Gemma 2/3)
               ffw_norm [D]  gate, up [F, D]  down [D, F]

Once loaded, projections that read the same input are stacked along their output axis
(see FUSED): `qkv` [(H+2K)*Hd, D] and `gate_up` [2F, D]. One product then streams all their
weights in one pass: at decode, fewer and longer reads of memory.
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


def tensor_specs(cfg: GemmaConfig) -> list[TensorSpec]:
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q_out, kv_out = cfg.num_heads * hd, cfg.num_kv_heads * hd
    specs = [
        TensorSpec(("embed",), (cfg.vocab_size, d), "embed_tokens.weight"),
        TensorSpec(("final_norm",), (d,), "norm.weight"),
    ]
    if not cfg.tie_word_embeddings:
        specs.append(TensorSpec(("lm_head",), (cfg.vocab_size, d), "lm_head.weight"))
    for i in range(cfg.num_layers):
        p = f"layers.{i}."

        def spec(key: str, shape: tuple[int, ...], name: str) -> None:
            specs.append(TensorSpec(("layers", i, key), shape, p + name))  # noqa: B023

        spec("attn_norm", (d,), "input_layernorm.weight")
        spec("q", (q_out, d), "self_attn.q_proj.weight")
        spec("k", (kv_out, d), "self_attn.k_proj.weight")
        spec("v", (kv_out, d), "self_attn.v_proj.weight")
        spec("o", (d, q_out), "self_attn.o_proj.weight")
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
        spec("gate", (f, d), "mlp.gate_proj.weight")
        spec("up", (f, d), "mlp.up_proj.weight")
        spec("down", (d, f), "mlp.down_proj.weight")
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
