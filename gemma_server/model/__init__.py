"""The Gemma decoder: config, parameters, KV cache, the pure forward pass, checkpoint loading."""

from gemma_server.model.cache import KVCache, init_cache
from gemma_server.model.checkpoint import Checkpoint, load_checkpoint
from gemma_server.model.config import PRESETS, GemmaConfig, preset
from gemma_server.model.forward import forward
from gemma_server.model.hf_config import config_from_hf_dict, load_hf_config

__all__ = [
    "PRESETS",
    "Checkpoint",
    "GemmaConfig",
    "KVCache",
    "config_from_hf_dict",
    "forward",
    "init_cache",
    "load_checkpoint",
    "load_hf_config",
    "preset",
]
