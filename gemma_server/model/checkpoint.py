"""Load a Hugging Face Gemma checkpoint (safetensors) into our parameter tree.

Tensors are read one at a time from memory-mapped safetensors files and cast to the target
dtype (or quantized) before the next is read, so peak memory stays near one copy of the
weights in the target dtype; our layout is HF's own (params.py). Single files, sharded
checkpoints with `model.safetensors.index.json`, the `model.` / `language_model.model.` /
`model.language_model.` prefixes and tied or separate heads are accepted; every
inconsistency fails with a `CheckpointError` naming the tensor or file.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from tqdm import tqdm

from gemma_server.errors import CheckpointError
from gemma_server.host_memory import (
    HugePageArena,
    release_freed_memory,
    transparent_huge_pages,
)
from gemma_server.model.config import GemmaConfig
from gemma_server.model.hf_config import load_hf_config
from gemma_server.model.params import FUSED, Params, empty_tree, freeze, set_leaf, tensor_specs
from gemma_server.model.quantize import (
    QUANTIZATIONS,
    quantize_int8,
    quantized_leaf,
    stack_rows,
)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Prefixes under which checkpoints store the text decoder; the first match is stripped.
_PREFIXES = ("model.language_model.", "language_model.model.", "model.")
# Tensors of multimodal Gemma 3 checkpoints that a text server does not use.
_SKIPPED = re.compile(r"^(model\.)?(vision_tower|multi_modal_projector)\.")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A loaded model: where it came from, its config and its parameters on device."""

    path: Path
    config: GemmaConfig
    params: Params
    dtype: str
    quantize: str | None = None


def resolve_dtype(name: str) -> jnp.dtype:
    if name == "float16":
        raise CheckpointError(
            "float16 is not supported: Gemma's activations overflow in float16; "
            "use bfloat16 or float32"
        )
    try:
        return jnp.dtype(DTYPES[name])
    except KeyError:
        raise CheckpointError(f"unknown dtype {name!r}; use float32 or bfloat16") from None


def resolve_checkpoint_dir(location: str | Path) -> Path:
    """A local directory as is; a Hub id (`org/name`) is downloaded with huggingface_hub."""
    path = Path(location).expanduser()
    if path.is_dir():
        return path
    if not _HUB_ID.match(str(location)):
        raise CheckpointError(f"{location}: no such checkpoint directory")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(
            repo_id=str(location),
            allow_patterns=["*.json", "*.safetensors", "tokenizer.model"],
        ))
    except Exception as exc:  # network, auth, unknown repo: all reported the same way
        raise CheckpointError(f"{location}: not a local directory and download failed: {exc}") \
            from None


def load_checkpoint(location: str | Path, dtype: str = "float32", progress: bool = True,
                    quantize: str | None = None) -> Checkpoint:
    """Load weights in `dtype`; with quantize="int8", the matrices become int8 + scales."""
    target = resolve_dtype(dtype)
    check_quantize(quantize)
    path = resolve_checkpoint_dir(location)
    cfg = load_hf_config(path)
    params = load_params(path, cfg, target, progress=progress, quantize=quantize)
    return Checkpoint(path=path, config=cfg, params=params, dtype=dtype, quantize=quantize)


def check_quantize(quantize: str | None) -> None:
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise CheckpointError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, "
                              f"not {quantize!r}")


def load_params(path: Path, cfg: GemmaConfig, dtype: jnp.dtype, progress: bool = True,
                quantize: str | None = None) -> Params:
    index = _tensor_index(path)
    specs = tensor_specs(cfg)
    wanted = {spec.hf_name for spec in specs}
    _check_names(index, wanted, cfg, path)
    tree = empty_tree(cfg)
    # disable=None: a bar on a terminal only, not in a log file or `docker logs`
    for spec in tqdm(specs, desc="loading weights", unit="tensor",
                     disable=None if progress else True):
        file, key = index[spec.hf_name]
        with safe_open(file, framework="flax") as f:
            tensor = f.get_tensor(key)
        if tuple(tensor.shape) != spec.shape:
            raise CheckpointError(
                f"{file.name}: tensor {key} has shape {list(tensor.shape)}, "
                f"expected {list(spec.shape)} for this config"
            )
        axis = quantized_leaf(spec.path) if quantize == "int8" else None
        if axis is None:
            set_leaf(tree, spec.path, jax.block_until_ready(tensor.astype(dtype)))
        else:  # from the checkpoint's own values, not from a dtype-rounded copy
            set_leaf(tree, spec.path, quantize_int8(tensor, axis))
        del tensor
        release_freed_memory()
    for layer in tree["layers"]:
        for fused, parts in FUSED.items():
            layer[fused] = jax.block_until_ready(stack_rows([layer.pop(p) for p in parts]))
            release_freed_memory()
    if jax.default_backend() == "cpu" and transparent_huge_pages():
        move_into_huge_pages(tree)
    return freeze(tree)


TRIM_EVERY = 64 << 20  # bytes moved between two `release_freed_memory` calls (~1 ms each)


def move_into_huge_pages(tree: Params) -> None:
    """On CPU the weights are host memory, which decode streams faster from huge pages
    (host_memory.py says why and by how much): each is copied into one `HugePageArena`, and
    its old copy freed before the next is made, so memory peaks near one copy. Weights
    already split over several devices (a multi-host slice) stay where they are."""
    def single(value: Any) -> bool:
        return isinstance(value, jax.Array) and len(value.sharding.device_set) == 1 and \
            value.is_fully_addressable

    movable = [leaf for leaf in jax.tree_util.tree_leaves(tree) if single(leaf)]
    if not movable:
        return
    arena = HugePageArena(HugePageArena.size_for(movable))
    del movable
    untrimmed = 0

    def moved(array: jax.Array) -> jax.Array:
        nonlocal untrimmed
        if not single(array):
            return array
        untrimmed += array.nbytes
        # device_put of an aligned host array keeps it in place on the CPU device (no copy);
        # uncommitted like the loaded array, so that it can still be sharded over processes
        placed = arena.place(np.asarray(array))
        if array.committed:
            (device,) = array.sharding.device_set
            return jax.device_put(placed, device)
        return jax.device_put(placed)

    def walk(node: Any) -> None:
        nonlocal untrimmed
        for key in (range(len(node)) if isinstance(node, list) else list(node)):
            value = node[key]
            if isinstance(value, (dict, list)):
                walk(value)
            else:  # an array, or a pytree of them (int8 values and scales)
                node[key] = jax.tree_util.tree_map(moved, value)
            del value
            if untrimmed >= TRIM_EVERY:  # the old copies' freed memory, back to the OS
                release_freed_memory()
                untrimmed = 0

    walk(tree)


def _tensor_index(path: Path) -> dict[str, tuple[Path, str]]:
    """HF name without prefix -> (file, key in that file), from the index or the files."""
    index_file = path / "model.safetensors.index.json"
    if index_file.exists():
        try:
            weight_map = json.loads(index_file.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index_file}: not a safetensors index ({exc})") from None
        files = {name: path / shard for name, shard in weight_map.items()}
        for shard in set(files.values()):
            if not shard.exists():
                raise CheckpointError(f"{index_file}: shard {shard.name} is missing")
        entries: Iterator[tuple[str, Path]] = iter(files.items())
    else:
        shards = sorted(path.glob("*.safetensors"))
        if not shards:
            raise CheckpointError(f"{path}: no *.safetensors files")
        entries = ((key, shard) for shard in shards for key in _keys(shard))
    index: dict[str, tuple[Path, str]] = {}
    for key, file in entries:
        if _SKIPPED.match(key):
            continue
        name = _strip_prefix(key)
        if name in index:
            raise CheckpointError(f"{file.name}: tensor {key} appears twice in the checkpoint")
        index[name] = (file, key)
    return index


def _keys(file: Path) -> list[str]:
    try:
        with safe_open(file, framework="flax") as f:
            return list(f.keys())
    except Exception as exc:
        raise CheckpointError(f"{file}: not a readable safetensors file ({exc})") from None


def _strip_prefix(key: str) -> str:
    if key == "lm_head.weight" or key.startswith("language_model.lm_head."):
        return "lm_head.weight"
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _check_names(
    index: dict[str, tuple[Path, str]], wanted: set[str], cfg: GemmaConfig, path: Path
) -> None:
    missing = sorted(wanted - index.keys())
    if missing:
        raise CheckpointError(
            f"{path}: missing tensor {missing[0]}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    extra = sorted(index.keys() - wanted)
    if cfg.tie_word_embeddings and "lm_head.weight" in extra:
        extra.remove("lm_head.weight")  # tied: the head is the embedding, as transformers does
    if extra:
        file, key = index[extra[0]]
        raise CheckpointError(
            f"{file.name}: unexpected tensor {key} for this config"
            + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
        )
