"""`GemmaConfig`: the frozen, hashable description of one Gemma text decoder.

It is hashable so that it can be a static argument of compiled functions: two equal configs
share compiled code. Every architectural difference between Gemma 1, 2 and 3 is a field here
(never an `if family == ...` in the forward pass), so the forward code reads the same for all.
Presets mirror the released sizes (`../shared/spec/gemma.md` §1); `hf_config.py` builds a
config from a Hugging Face `config.json`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

LayerType = Literal["sliding", "global"]
Family = Literal["gemma", "gemma2", "gemma3"]


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    family: Family
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    layer_types: tuple[LayerType, ...]
    sliding_window: int | None = None
    rope_theta_global: float = 10_000.0
    rope_theta_local: float = 10_000.0
    rope_scale_global: float = 1.0  # linear RoPE scaling factor, global layers only
    query_pre_attn_scalar: float | None = None  # None: head_dim (Gemma 1)
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    use_post_norms: bool = False  # Gemma 2/3: post-attention and pre/post-feedforward norms
    use_qk_norm: bool = False  # Gemma 3
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 8192
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        if len(self.layer_types) != self.num_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads {self.num_heads} is not a multiple of "
                f"num_key_value_heads {self.num_kv_heads}"
            )
        if "sliding" in self.layer_types and not self.sliding_window:
            raise ValueError("sliding layers need a positive sliding_window")

    @property
    def attn_scale(self) -> float:
        """Multiplier of the q·k scores: query_pre_attn_scalar^-0.5 (Gemma 2/3), head_dim^-0.5."""
        scalar = self.query_pre_attn_scalar or self.head_dim
        return float(scalar) ** -0.5

    @property
    def embed_normalizer(self) -> float:
        """sqrt(hidden); the forward pass rounds it to the compute dtype, as the references do."""
        return math.sqrt(self.hidden_size)

    @property
    def queries_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    def rope_for_layer(self, layer: int) -> tuple[float, float]:
        """(theta, linear scaling factor) of a layer: Gemma 3 uses two bases."""
        if self.layer_types[layer] == "sliding":
            return self.rope_theta_local, 1.0
        return self.rope_theta_global, self.rope_scale_global

    def cache_length(self, layer: int, max_len: int) -> int:
        """KV-cache entries a layer needs for sequences of `max_len` tokens.

        A sliding layer only ever looks `sliding_window` tokens back, so its cache is a ring
        buffer of that size; global layers keep every position.
        """
        if self.layer_types[layer] == "sliding" and self.sliding_window:
            return min(self.sliding_window, max_len)
        return max_len

    def num_params(self) -> int:
        d, f = self.hidden_size, self.intermediate_size
        attn = d * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        per_layer = attn + 3 * d * f + 4 * d + (2 * self.head_dim if self.use_qk_norm else 0)
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.num_layers * per_layer + d + head


def all_global(num_layers: int) -> tuple[LayerType, ...]:
    """Gemma 1: every layer attends to the whole sequence."""
    return tuple("global" for _ in range(num_layers))


def gemma2_layer_types(num_layers: int) -> tuple[LayerType, ...]:
    """Gemma 2 alternates local and global, starting with a local layer 0."""
    return tuple("sliding" if (i + 1) % 2 else "global" for i in range(num_layers))


def gemma3_layer_types(num_layers: int, pattern: int = 6) -> tuple[LayerType, ...]:
    """Gemma 3: five local layers then one global, repeated and truncated."""
    return tuple("global" if (i + 1) % pattern == 0 else "sliding" for i in range(num_layers))


def _gemma1(vocab: int, d: int, layers: int, heads: int, kv: int, f: int) -> GemmaConfig:
    return GemmaConfig(
        family="gemma", vocab_size=vocab, hidden_size=d, num_layers=layers, num_heads=heads,
        num_kv_heads=kv, head_dim=256, intermediate_size=f, layer_types=all_global(layers),
    )


def _gemma2(d: int, layers: int, heads: int, kv: int, hd: int, f: int, qpas: int) -> GemmaConfig:
    return GemmaConfig(
        family="gemma2", vocab_size=256000, hidden_size=d, num_layers=layers, num_heads=heads,
        num_kv_heads=kv, head_dim=hd, intermediate_size=f,
        layer_types=gemma2_layer_types(layers), sliding_window=4096,
        query_pre_attn_scalar=qpas, attn_logit_softcap=50.0, final_logit_softcap=30.0,
        use_post_norms=True,
    )


def _gemma3(
    vocab: int, d: int, layers: int, heads: int, kv: int, hd: int, f: int, qpas: int,
    window: int, scale: float, max_pos: int,
) -> GemmaConfig:
    return GemmaConfig(
        family="gemma3", vocab_size=vocab, hidden_size=d, num_layers=layers, num_heads=heads,
        num_kv_heads=kv, head_dim=hd, intermediate_size=f,
        layer_types=gemma3_layer_types(layers), sliding_window=window,
        rope_theta_global=1_000_000.0, rope_theta_local=10_000.0, rope_scale_global=scale,
        query_pre_attn_scalar=qpas, use_post_norms=True, use_qk_norm=True,
        max_position_embeddings=max_pos,
    )


PRESETS: dict[str, GemmaConfig] = {
    "gemma-2b": _gemma1(256000, 2048, 18, 8, 1, 16384),
    "gemma-7b": _gemma1(256000, 3072, 28, 16, 16, 24576),
    "gemma-2-2b": _gemma2(2304, 26, 8, 4, 256, 9216, 256),
    "gemma-2-9b": _gemma2(3584, 42, 16, 8, 256, 14336, 256),
    "gemma-2-27b": _gemma2(4608, 46, 32, 16, 128, 36864, 144),
    "gemma-3-1b": _gemma3(262144, 1152, 26, 4, 1, 256, 6912, 256, 512, 1.0, 32768),
    "gemma-3-4b": _gemma3(262208, 2560, 34, 8, 4, 256, 10240, 256, 1024, 8.0, 131072),
    "gemma-3-12b": _gemma3(262208, 3840, 48, 16, 8, 256, 15360, 256, 1024, 8.0, 131072),
    "gemma-3-27b": _gemma3(262208, 5376, 62, 32, 16, 128, 21504, 168, 1024, 8.0, 131072),
}


def preset(name: str) -> GemmaConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
