"""Random-weight Gemma checkpoints in Hugging Face format, for tests, goldens and the demo model.

No real weights can be downloaded where gemma_server is developed and tested, so the loaders are
exercised on checkpoints we write ourselves, in exactly the layout the Hub uses (`config.json`,
safetensors with HF tensor names, `generation_config.json`, `tokenizer.model`). Weights come
from a fixed seed per tensor name, so the same spec writes bit-identical files on any machine:
golden logits computed once with transformers stay valid.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import zlib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from gemma_server.model.config import GemmaConfig
from gemma_server.model.params import tensor_specs

GEMMA2_LAYOUT_TOKENIZER = "tokenizer_gemma2_layout.model"  # <start_of_turn> = 106
GEMMA3_LAYOUT_TOKENIZER = "tokenizer_gemma3_layout.model"  # <start_of_turn> = 105


_TOKENIZER_CONFIG = {
    "tokenizer_class": "GemmaTokenizer",
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "padding_side": "left",
}


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """What to write: an HF config dict, the tokenizer asset, and weight scales."""

    name: str
    hf_config: Mapping[str, Any]
    tokenizer: str
    eos_token_id: tuple[int, ...]
    seed: int = 0
    embed_std: float = 0.5
    proj_std: float = 0.25
    norm_std: float = 0.3
    # Ids whose untied-head rows are zeroed so greedy decoding never picks them (the demo
    # uses it to keep reserved and byte-fallback pieces out of its nonsense).
    quiet_ids: tuple[int, ...] = ()


def asset_path(name: str) -> Path:
    return Path(str(resources.files("gemma_server") / "assets" / name))


def write_checkpoint(
    spec: SyntheticSpec,
    out_dir: str | Path,
    cfg: GemmaConfig,
    shards: int = 1,
    prefix: str = "model.",
    dtype: str = "float32",
) -> Path:
    """Write `spec` as an HF checkpoint directory; `cfg` must be what its config parses to."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = random_tensors(spec, cfg, prefix, dtype)
    _save_shards(tensors, out, shards)
    (out / "config.json").write_text(json.dumps(dict(spec.hf_config), indent=2) + "\n")
    generation = {"bos_token_id": 2, "pad_token_id": 0, "eos_token_id": list(spec.eos_token_id)}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    shutil.copyfile(asset_path(spec.tokenizer), out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps(_TOKENIZER_CONFIG, indent=2) + "\n")
    return out


def random_tensors(
    spec: SyntheticSpec, cfg: GemmaConfig, prefix: str = "model.", dtype: str = "float32"
) -> dict[str, np.ndarray]:
    """HF-named tensors ([out, in] orientation) with deterministic random values."""
    tensors = {}
    for t in tensor_specs(cfg):
        shape = t.shape
        name = t.hf_name if t.hf_name == "lm_head.weight" else prefix + t.hf_name
        if name.endswith("norm.weight"):
            std = spec.norm_std
        elif "embed_tokens" in name or name == "lm_head.weight":
            std = spec.embed_std
        else:
            std = spec.proj_std
        rng = np.random.default_rng([spec.seed, zlib.crc32(t.hf_name.encode())])
        values = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        if name == "lm_head.weight" and spec.quiet_ids:
            values[list(spec.quiet_ids)] = 0.0
        tensors[name] = _cast(values, dtype)
    return tensors


def _cast(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return values
    import ml_dtypes  # installed with jax

    return values.astype(ml_dtypes.bfloat16)


def _save_shards(tensors: dict[str, np.ndarray], out: Path, shards: int) -> None:
    metadata = {"format": "pt"}  # transformers refuses safetensors files without it
    if shards == 1:
        save_file(tensors, str(out / "model.safetensors"), metadata=metadata)
        return
    names = list(tensors)
    weight_map = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s::shards]}
        save_file(part, str(out / file), metadata=metadata)
        weight_map.update({n: file for n in part})
    total = sum(int(t.nbytes) for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
