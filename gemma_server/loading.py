"""Everything needed to serve one model, loaded together: weights, tokenizer, stop ids, name."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gemma_server.demo import DEMO_NAME, demo_checkpoint_dir
from gemma_server.errors import CheckpointError
from gemma_server.model.checkpoint import Checkpoint, load_checkpoint, resolve_checkpoint_dir
from gemma_server.tokenizer import GemmaTokenizer, stop_ids


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    name: str
    checkpoint: Checkpoint
    tokenizer: GemmaTokenizer
    stop_ids: frozenset[int]


def load_model(
    checkpoint: str | Path | None = None, dtype: str = "float32", progress: bool = True,
    quantize: str | None = None,
) -> LoadedModel:
    """Load `checkpoint` (directory or Hub id), or the embedded demo model when None.

    The default served name is the checkpoint directory's name, as the README documents.
    """
    if checkpoint is None:
        path, name = demo_checkpoint_dir(), DEMO_NAME
    else:
        path = resolve_checkpoint_dir(checkpoint)
        name = Path(str(checkpoint).rstrip("/")).name
    tokenizer_file = path / "tokenizer.model"
    if not tokenizer_file.exists():
        raise CheckpointError(f"{path}: tokenizer.model is missing")
    tokenizer = GemmaTokenizer(tokenizer_file)
    loaded = load_checkpoint(path, dtype=dtype, progress=progress, quantize=quantize)
    if loaded.config.vocab_size < tokenizer.vocab_size:
        raise CheckpointError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} pieces but the model only "
            f"{loaded.config.vocab_size} embedding rows"
        )
    return LoadedModel(name, loaded, tokenizer, stop_ids(tokenizer, path))
