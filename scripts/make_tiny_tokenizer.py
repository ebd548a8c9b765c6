"""Train the two tiny SentencePiece tokenizers shipped in `gemma_server/assets/`.

They copy the real Gemma tokenizers' layout and settings (`../shared/spec/gemma.md` §6): BPE,
byte fallback, split digits, no dummy prefix, whitespace kept as written, identity
normalisation; `<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3, then the reserved pieces so that
`<start_of_turn>`/`<end_of_turn>` land on 106/107 (Gemma 1/2 layout) or 105/106 (Gemma 3).

The corpus is local text: docstrings of the Python standard library plus a few lines of
accented and CJK text, so common words merge while emoji and most CJK fall back to bytes.
The outputs are committed (a few tens of KB); rerun only to change the tokenizers, and then
regenerate the goldens (`scripts/make_goldens.py`).

    python scripts/make_tiny_tokenizer.py
"""

from __future__ import annotations

import argparse
import importlib
import io
import pydoc
from pathlib import Path

import sentencepiece as spm

ASSETS = Path(__file__).resolve().parents[1] / "gemma_server" / "assets"
VOCAB = 640
_MODULES = ["json", "pathlib", "argparse", "collections", "functools", "itertools", "string",
            "textwrap", "datetime", "email.message", "http.client", "urllib.parse", "logging",
            "unittest", "subprocess", "threading", "asyncio", "csv", "random", "statistics"]
_EXTRA = [
    "Le café est naïve, à côté de la gare. Où est l'hôtel? Très bien, merci.",
    "Die Straße ist schön und grün. Über alles, für immer.",
    "日本語のテキストです。東京は日本の首都です。",
    "Hello world! The capital of France is Paris. Numbers: 12345 67890.",
    "What is the capital of France? Tell me a story about a cat.",
]


def reserved_pieces(gemma3: bool) -> list[str]:
    """Pieces 4.. of the Gemma layouts, ending with the two turn markers."""
    head = ["<mask>", "[multimodal]"] if gemma3 else ["<mask>", "<2mass>", "[@BOS@]"]
    unused = [f"<unused{i}>" for i in range(99)]
    return head + unused + ["<start_of_turn>", "<end_of_turn>"]


def corpus() -> str:
    lines = []
    for name in _MODULES:
        module = importlib.import_module(name)
        text = pydoc.getdoc(module)
        for attr in sorted(dir(module)):
            text += "\n" + pydoc.getdoc(getattr(module, attr, None))
        lines.extend(line for line in text.splitlines() if line.strip())
    return "\n".join(lines + _EXTRA * 20)


def train(out: Path, gemma3: bool) -> None:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus().splitlines()),
        model_writer=model,
        model_type="bpe",
        vocab_size=VOCAB,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        character_coverage=0.9995,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=reserved_pieces(gemma3),
        num_threads=1,
        minloglevel=2,
    )
    out.write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(out))
    turn = 105 if gemma3 else 106
    assert sp.piece_to_id("<start_of_turn>") == turn, sp.piece_to_id("<start_of_turn>")
    assert sp.piece_to_id("<end_of_turn>") == turn + 1
    print(f"wrote {out} ({out.stat().st_size} bytes, {sp.get_piece_size()} pieces)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=ASSETS)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    train(args.out_dir / "tokenizer_gemma2_layout.model", gemma3=False)
    train(args.out_dir / "tokenizer_gemma3_layout.model", gemma3=True)


if __name__ == "__main__":
    main()
