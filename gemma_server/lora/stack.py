"""LoRA weights on device: one stack per projection, `[capacity + 1, ...]`, padded to max rank.

Index 0 is the zero adapter (the base model); loaded adapters occupy 1..capacity. Shapes depend
only on the base config, the capacity and the max rank, so loading, swapping or unloading an
adapter rewrites rows of the stacks without changing any compiled shape.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from gemma_server.lora.adapter import TARGETS, LoraAdapter, projection_shape
from gemma_server.model.config import GemmaConfig
from gemma_server.model.lora import LayerStacks


def empty_stacks(cfg: GemmaConfig, capacity: int, rank: int, dtype: jnp.dtype) -> \
        tuple[LayerStacks, ...]:
    n = capacity + 1
    layers = []
    for _ in range(cfg.num_layers):
        layer = {}
        for target in TARGETS:
            fan_in, fan_out = projection_shape(cfg, target)
            layer[target] = (jnp.zeros((n, fan_in, rank), dtype),
                             jnp.zeros((n, rank, fan_out), dtype))
        layers.append(layer)
    return tuple(layers)


def adapter_rows(adapter: LoraAdapter | None, cfg: GemmaConfig, rank: int,
                 dtype: jnp.dtype) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], ...]:
    """One adapter as a row of every stack (zeros where it has no weights; None: all zeros)."""
    np_dtype = jnp.dtype(dtype)  # a numpy dtype (bfloat16 through ml_dtypes)
    layers = []
    for layer in range(cfg.num_layers):
        rows = {}
        for target in TARGETS:
            fan_in, fan_out = projection_shape(cfg, target)
            a = np.zeros((fan_in, rank), np.float32)
            b = np.zeros((rank, fan_out), np.float32)
            if adapter is not None and (layer, target) in adapter.weights:
                wa, wb = adapter.weights[(layer, target)]
                a[:, :wa.shape[1]] = wa
                b[:wb.shape[0], :] = wb
            rows[target] = (a.astype(np_dtype), b.astype(np_dtype))
        layers.append(rows)
    return tuple(layers)
