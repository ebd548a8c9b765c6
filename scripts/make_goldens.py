"""Write the golden files our tests compare against, using Hugging Face transformers as reference.

For each tiny checkpoint (`gemma_server.model.tiny`) this writes `tests/goldens/<name>.npz`:
the prompts' token ids (from HF's tokenizer), float32 log-probabilities of every position
(transformers, eager attention, CPU) and HF's greedy continuation. It also writes
`tests/goldens/tokenizer_<layout>.json`: HF token ids of texts that exercise special tokens,
byte fallback and whitespace.

transformers and torch are needed only here, never by the package or CI. Run it in a separate
virtualenv (on the development machine install torch only as `torch==2.13.0`):

    python -m venv .venv-ref && .venv-ref/bin/pip install torch==2.13.0 transformers \
        sentencepiece protobuf -e .
    .venv-ref/bin/python scripts/make_goldens.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from gemma_server.model.hf_config import config_from_hf_dict
from gemma_server.model.synthetic import write_checkpoint
from gemma_server.model.tiny import TINY_SPECS

OUT = Path(__file__).resolve().parents[1] / "tests" / "goldens"
PROMPTS = [
    # Longer than the sliding window (8), with multi-byte text and byte-fallback emoji.
    "naïve café 日本語 🙂 — The capital of France is Paris. Numbers 1234 and more text "
    "to make the prompt long: the quick brown fox jumps over the lazy dog.",
    # A chat turn written as raw text: special-token strings become their ids.
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n",
    "Hello",
]
TOKENIZER_TEXTS = [
    "Hello world! The capital of France is Paris.",
    "naïve café 日本語 🙂",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "a<eos>b<pad>c<unk>d",
    "<bos>hello",
    " leading  and   inner spaces\tand tabs\n\nnewlines ",
    "digits 0123456789 and 3.14159",
    "<mask><unused3>[multimodal]",
    "",
]
NEW_TOKENS = 10


def golden_for(name: str, root: Path) -> dict[str, np.ndarray]:
    spec = TINY_SPECS[name]
    path = write_checkpoint(spec, root / name, config_from_hf_dict(dict(spec.hf_config)))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    out: dict[str, np.ndarray] = {}
    for i, text in enumerate(PROMPTS):
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(ids).logits[0].float()
            generated = model.generate(
                ids, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
                pad_token_id=0,
            )
        out[f"ids_{i}"] = ids[0].numpy().astype(np.int32)
        out[f"logprobs_{i}"] = torch.log_softmax(logits, dim=-1).numpy().astype(np.float32)
        out[f"greedy_{i}"] = generated[0, ids.shape[1]:].numpy().astype(np.int32)
        print(f"{name} prompt {i}: {ids.shape[1]} tokens, greedy {out[f'greedy_{i}'].tolist()}")
    return out


def tokenizer_golden(name: str, root: Path) -> dict[str, object]:
    tokenizer = AutoTokenizer.from_pretrained(root / name)
    return {
        "transformers": transformers.__version__,
        "cases": [{"text": t, "ids": tokenizer(t)["input_ids"]} for t in TOKENIZER_TEXTS],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=OUT)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in TINY_SPECS:
            np.savez_compressed(args.out_dir / f"{name}.npz", **golden_for(name, root))
        for name, layout in (("tiny-gemma2", "gemma2"), ("tiny-gemma3", "gemma3")):
            data = tokenizer_golden(name, root)
            path = args.out_dir / f"tokenizer_{layout}_layout.json"
            path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    meta = {"transformers": transformers.__version__, "torch": torch.__version__}
    (args.out_dir / "README.md").write_text(
        "Golden outputs of Hugging Face transformers on the tiny checkpoints.\n"
        "Written by `scripts/make_goldens.py`; do not edit by hand.\n\n"
        f"Generated with {json.dumps(meta)}.\n"
    )


if __name__ == "__main__":
    main()
