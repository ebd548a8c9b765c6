"""Create PEFT LoRA adapters for tiny-gemma2 and write transformers + PEFT goldens for them.

Writes `tests/goldens/lora/<name>/` (a real PEFT adapter: adapter_config.json +
adapter_model.safetensors, saved by `peft`) and `tests/goldens/lora/<name>.npz` (prompt ids,
float32 log-probabilities at every position, greedy continuation) for three adapters:

- `attn`: q/k/v/o projections only, r=4, alpha=8;
- `all`: all seven projections, r=8, alpha=16;
- `rslora`: all projections with use_rslora, r=8, alpha=4, plus a rank_pattern (down_proj r=4)
  and an alpha_pattern (q_proj alpha 16).

PEFT initialises lora_B to zero (a no-op adapter), so the script fills every LoRA weight with
seeded random values first. Needs transformers, peft and torch (`torch==2.13.0` here) in a
separate virtualenv, like `make_goldens.py`:

    .venv-ref/bin/pip install peft && .venv-ref/bin/python scripts/make_lora_goldens.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from gemma_server.model.hf_config import config_from_hf_dict
from gemma_server.model.synthetic import write_checkpoint
from gemma_server.model.tiny import TINY_GEMMA2

OUT = Path(__file__).resolve().parents[1] / "tests" / "goldens" / "lora"
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTERS = {
    "attn": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj",
                                                          "o_proj"], task_type="CAUSAL_LM"),
    "all": LoraConfig(r=8, lora_alpha=16, target_modules=ALL, task_type="CAUSAL_LM"),
    "rslora": LoraConfig(r=8, lora_alpha=4, use_rslora=True, target_modules=ALL,
                         rank_pattern={"down_proj": 4}, alpha_pattern={"q_proj": 16},
                         task_type="CAUSAL_LM"),
}
PROMPTS = [
    [2, 106, 425, 371, 117, 598, 528, 427, 535, 397, 375, 536, 539, 601, 527, 474, 376, 530,
     541, 380, 392, 107, 117, 106, 491, 393, 117],
    [2, 598, 528, 427, 535],
]
NEW_TOKENS = 8


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = write_checkpoint(TINY_GEMMA2, Path(tmp) / "base",
                                    config_from_hf_dict(dict(TINY_GEMMA2.hf_config)))
        for index, (name, config) in enumerate(ADAPTERS.items()):
            base = AutoModelForCausalLM.from_pretrained(
                base_dir, dtype=torch.float32, attn_implementation="eager")
            model = get_peft_model(base, config).eval()
            generator = torch.Generator().manual_seed(100 + index)
            with torch.no_grad():
                for param_name, param in model.named_parameters():
                    if "lora_" in param_name:
                        param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
            model.save_pretrained(OUT / name)
            golden: dict[str, np.ndarray] = {}
            for i, prompt in enumerate(PROMPTS):
                ids = torch.tensor([prompt])
                with torch.no_grad():
                    logits = model(input_ids=ids).logits[0].float()
                    out = model.generate(input_ids=ids, max_new_tokens=NEW_TOKENS,
                                         do_sample=False, eos_token_id=None, pad_token_id=0)
                golden[f"ids_{i}"] = np.asarray(prompt, np.int32)
                golden[f"logprobs_{i}"] = torch.log_softmax(logits, -1).numpy()
                golden[f"greedy_{i}"] = out[0, len(prompt):].numpy().astype(np.int32)
                print(name, i, golden[f"greedy_{i}"].tolist())
            np.savez_compressed(OUT / f"{name}.npz", **golden)
    for readme in OUT.glob("*/README.md"):  # PEFT's model card template: not needed
        readme.unlink()


if __name__ == "__main__":
    main()
