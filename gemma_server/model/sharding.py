"""Tensor parallelism: how the parameters and the KV cache are laid over a device mesh.

One mesh axis, `model`, of N devices; XLA's SPMD partitioner (GSPMD) derives every
activation's layout and inserts the collectives from these annotations, so the forward code
carries none. The split follows the Megatron pattern on HF's `[out, in]` matrices:

- q, k, v and gate, up are split along their outputs: each device computes its own attention
  heads and its slice of the MLP's hidden units; o and down along their inputs, so each device
  holds the matching slice and the partial results are summed (one all-reduce per block).
- k, v and the KV cache are split by KV heads when N divides their number; otherwise (MQA:
  Gemma 2B has one KV head) every device keeps all KV heads, replicated.
- The embedding and the output head are split along the vocabulary.
- Norms, LoRA stacks and the sampling state are small and replicated.

Any dimension N does not divide is replicated rather than split (a slower, never a wrong,
layout); `shardable` tells whether a config splits its attention heads at all.
Fused projections (`qkv`, `gate_up`, params.py) are split back into their parts first: their
stacked rows would not fall on head or hidden-unit boundaries.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gemma_server.errors import ConfigurationError
from gemma_server.model.cache import KVCache
from gemma_server.model.config import GemmaConfig
from gemma_server.model.params import FUSED, Params, fused_sizes
from gemma_server.model.quantize import Int8Weight

AXIS = "model"

# parameter name -> which axis of the [out, in] matrix is split: 0 outputs, 1 inputs
_SPLIT_AXIS = {"embed": 0, "lm_head": 0, "q": 0, "k": 0, "v": 0, "gate": 0, "up": 0,
               "o": 1, "down": 1}


def initialize_processes(coordinator_address: str, num_processes: int, process_id: int) -> None:
    """Join a multi-host slice (before anything else touches JAX): every process then sees
    every device of the slice, and `make_mesh` spans them all. CPU devices of several
    processes exchange their collectives through gloo (no effect on GPU/TPU)."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)


def device_memory_bytes() -> int | None:
    """Memory of one device: the accelerator's own limit, or the host's RAM for CPU devices
    (which share it); None when the platform does not say."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    if device.platform == "cpu":
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return None


def take_devices(count: int, setting: str = "tensor_parallel") -> list[jax.Device]:
    """The first `count` devices (all processes' in multi-host), or a refusal naming both."""
    available = jax.devices()
    if count > len(available):
        raise ConfigurationError(f"{setting} is {count} but only {len(available)} "
                                 f"device(s) are visible ({available[0].platform})")
    return list(available[:count])


def make_mesh(devices: int) -> Mesh:
    """A one-axis mesh over the first `devices` devices."""
    return Mesh(np.asarray(take_devices(devices)), (AXIS,))


def check_shardable(cfg: GemmaConfig, n: int) -> None:
    """Attention heads must divide evenly: a head is never cut in two."""
    if cfg.num_heads % n:
        raise ConfigurationError(f"tensor_parallel {n} does not divide the model's "
                                 f"{cfg.num_heads} attention heads")


def unfuse(params: Params, cfg: GemmaConfig) -> Params:
    """Each layer's `qkv` and `gate_up` split back into q, k, v and gate, up."""
    layers = []
    for layer in params["layers"]:
        layer = dict(layer)
        for fused, parts in FUSED.items():
            if fused not in layer:
                continue
            whole = layer.pop(fused)
            bounds = list(itertools.accumulate(fused_sizes(cfg, fused)))[:-1]
            for part, piece in zip(parts, _split_rows(whole, bounds), strict=True):
                layer[part] = piece
        layers.append(layer)
    return {**params, "layers": tuple(layers)}


def _split_rows(w: Any, bounds: list[int]) -> list[Any]:
    if isinstance(w, Int8Weight):
        return [Int8Weight(q=q, scale=s, channel_axis=0) for q, s in
                zip(jnp.split(w.q, bounds), jnp.split(w.scale, bounds), strict=True)]
    return list(jnp.split(w, bounds))


def _matrix_spec(name: str, shape: tuple[int, ...], n: int) -> PartitionSpec:
    axis = _SPLIT_AXIS.get(name)
    if axis is None or len(shape) != 2 or shape[axis] % n:
        return PartitionSpec()
    return PartitionSpec(AXIS, None) if axis == 0 else PartitionSpec(None, AXIS)


def _leaf_shardings(name: str, leaf: Any, mesh: Mesh) -> Any:
    n = mesh.shape[AXIS]
    if isinstance(leaf, Int8Weight):
        spec = _matrix_spec(name, leaf.q.shape, n)
        # one scale per output row: split with the rows, else whole on every device
        scale = PartitionSpec(AXIS) if spec == PartitionSpec(AXIS, None) else PartitionSpec()
        # the same pytree as the weight, with shardings for leaves
        return jax.tree_util.tree_map(
            lambda a: NamedSharding(mesh, scale if a.ndim == 1 else spec), leaf)
    return NamedSharding(mesh, _matrix_spec(name, leaf.shape, n))


def param_shardings(params: Params, mesh: Mesh) -> Params:
    """A tree like `params` (unfused) of NamedShardings."""
    out: Params = {k: _leaf_shardings(k, v, mesh) for k, v in params.items() if k != "layers"}
    out["layers"] = tuple({k: _leaf_shardings(k, v, mesh) for k, v in layer.items()}
                          for layer in params["layers"])
    return out


def kv_spec(cfg: GemmaConfig, n: int) -> PartitionSpec:
    """Cache layers [B, K, S, Hd]: split by KV heads when N divides them, else replicated."""
    return PartitionSpec(None, AXIS, None, None) if cfg.num_kv_heads % n == 0 \
        else PartitionSpec()


def cache_shardings(cache: KVCache, cfg: GemmaConfig, mesh: Mesh) -> KVCache:
    sharding = NamedSharding(mesh, kv_spec(cfg, mesh.shape[AXIS]))
    shardings: KVCache = jax.tree_util.tree_map(lambda _: sharding, cache)
    return shardings


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shard_params(params: Params, cfg: GemmaConfig, mesh: Mesh) -> Params:
    """The parameters unfused and placed on the mesh (each device receives its slices)."""
    check_shardable(cfg, mesh.shape[AXIS])
    split = unfuse(params, cfg)
    return jax.device_put(split, param_shardings(split, mesh))
