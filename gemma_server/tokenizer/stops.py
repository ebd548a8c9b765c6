"""Which token ids end a generation."""

from __future__ import annotations

import json
from pathlib import Path

from gemma_server.tokenizer.tokenizer import EOS_ID, GemmaTokenizer


def stop_ids(tokenizer: GemmaTokenizer, checkpoint_dir: Path | None = None) -> frozenset[int]:
    """`<eos>` and `<end_of_turn>`, plus `generation_config.json`'s `eos_token_id`s.

    Gemma 1's generation config lists only `<eos>`, but its -it models end every turn with
    `<end_of_turn>`, so we always stop on both (as google-deepmind/gemma's sampler does).
    Ids come from the tokenizer, never hard-coded: 107 is `<end_of_turn>` in Gemma 1/2 but a
    newline in Gemma 3.
    """
    ids = {EOS_ID, tokenizer.end_of_turn_id}
    if checkpoint_dir is not None:
        path = Path(checkpoint_dir) / "generation_config.json"
        if path.exists():
            eos = json.loads(path.read_text()).get("eos_token_id")
            if isinstance(eos, int):
                ids.add(eos)
            elif isinstance(eos, list):
                ids.update(int(i) for i in eos)
    return frozenset(ids)
