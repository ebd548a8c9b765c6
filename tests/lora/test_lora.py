"""LoRA: parity with transformers + PEFT, batched multi-adapter serving, validation."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from gemma_server.config import EngineConfig
from gemma_server.datatypes import GenerationRequest, SamplingParams, TokenEvent
from gemma_server.engine.engine import Engine
from gemma_server.errors import ConfigurationError
from gemma_server.lora import load_adapter
from gemma_server.lora.stack import adapter_rows, empty_stacks
from gemma_server.model.forward import forward
from gemma_server.model.lora import LoraBatch
from tests.conftest import backend_compilations

LORA = Path(__file__).parents[1] / "goldens" / "lora"
NAMES = ["attn", "all", "rslora"]
MODEL = "tiny-gemma2"


def golden(name: str) -> dict[str, np.ndarray]:
    with np.load(LORA / f"{name}.npz") as data:
        return dict(data)


def _stacks_with(model, adapters, dtype=jnp.float32):
    stacks = empty_stacks(model.config, len(adapters), 32, dtype)
    for row, adapter in enumerate(adapters, start=1):
        rows = adapter_rows(adapter, model.config, 32, dtype)
        stacks = jax.tree_util.tree_map(lambda s, a, r=row: s.at[r].set(a), stacks, rows)
    return stacks


@pytest.mark.parametrize("name", NAMES)
def test_logprobs_match_transformers_with_peft(name, tiny_model):
    model = tiny_model(MODEL)
    adapter = load_adapter(name, LORA / name, model.config)
    stacks = _stacks_with(model, [adapter])
    gold = golden(name)
    for i in (0, 1):
        ids = jnp.asarray(gold[f"ids_{i}"])[None]
        logits, _ = forward(model.params, ids, jnp.arange(ids.shape[1])[None], None,
                            model.config, lora=LoraBatch(stacks, jnp.asarray([1])))
        logprobs = np.asarray(jax.nn.log_softmax(logits[0], -1))
        error = np.abs(logprobs - gold[f"logprobs_{i}"]).max()
        assert error < 1e-4, f"prompt {i}: {error:.2e}"


def test_adapters_really_change_the_output(tiny_model):
    model = tiny_model(MODEL)
    stacks = _stacks_with(model, [load_adapter("all", LORA / "all", model.config)])
    ids = jnp.asarray(golden("all")["ids_1"])[None]
    pos = jnp.arange(ids.shape[1])[None]
    base, _ = forward(model.params, ids, pos, None, model.config,
                      lora=LoraBatch(stacks, jnp.asarray([0])))
    plain, _ = forward(model.params, ids, pos, None, model.config)
    tuned, _ = forward(model.params, ids, pos, None, model.config,
                       lora=LoraBatch(stacks, jnp.asarray([1])))
    np.testing.assert_allclose(np.asarray(base), np.asarray(plain), atol=1e-5)
    assert np.abs(np.asarray(tuned) - np.asarray(plain)).max() > 0.1


@pytest.fixture(scope="module")
def lora_engine(tiny_model):
    model = tiny_model(MODEL)
    config = EngineConfig(max_batch_size=8, max_total_tokens=128, max_input_length=100,
                          max_batch_prefill_tokens=64, prefill_buckets=(16, 64),
                          prefill_batch_sizes=(1, 4), max_loras=3, max_lora_rank=8)
    engine = Engine(model.params, model.config, config)
    engine.start()
    rows = {name: engine.load_adapter(load_adapter(name, LORA / name, model.config,
                                                   max_rank=8)) for name in ("attn", "all")}
    yield engine, rows
    engine.stop()


async def _run(engine, prompt, adapter, max_new=8, temperature=0.0, seed=None, rid=None):
    request = GenerationRequest(rid or f"r-{adapter}-{len(prompt)}-{seed}-{id(prompt)}",
                                tuple(int(t) for t in prompt), max_new,
                                sampling=SamplingParams(temperature=temperature, seed=seed),
                                adapter_id=adapter, logprobs=0)
    tokens, logprobs = [], []
    async for event in engine.submit(request):
        if isinstance(event, TokenEvent):
            tokens.append(event.token_id)
            logprobs.append(event.logprob)
    return tokens, logprobs


def test_engine_greedy_with_adapters_equals_peft(lora_engine):
    engine, rows = lora_engine
    for name in ("attn", "all"):
        gold = golden(name)
        for i in (0, 1):
            tokens, _ = asyncio.run(_run(engine, gold[f"ids_{i}"], rows[name]))
            assert tokens == gold[f"greedy_{i}"].tolist(), (name, i)


def test_mixed_batch_of_base_and_two_adapters_equals_each_alone(lora_engine):
    engine, rows = lora_engine
    prompt = golden("all")["ids_0"]
    jobs = [(prompt, None), (prompt, rows["attn"]), (prompt, rows["all"]),
            (prompt[:9], rows["all"]), (prompt[3:], None), (prompt[:5], rows["attn"])]
    alone = [asyncio.run(_run(engine, p, a, rid=f"alone{i}")) for i, (p, a) in
             enumerate(jobs)]

    async def together():
        return await asyncio.gather(*[_run(engine, p, a, rid=f"mixed{i}")
                                      for i, (p, a) in enumerate(jobs)])

    mixed = asyncio.run(together())
    for (tokens, lps), (ref_tokens, ref_lps) in zip(mixed, alone, strict=True):
        assert tokens == ref_tokens
        np.testing.assert_allclose(lps, ref_lps, atol=1e-4)
    assert alone[0][0] != alone[1][0] != alone[2][0]


def test_switching_adapters_compiles_nothing(lora_engine, tiny_model):
    engine, rows = lora_engine
    with backend_compilations() as compiles:
        prompt = golden("attn")["ids_1"]

        async def switching():
            await asyncio.gather(*[_run(engine, prompt, a, temperature=0.7, seed=s,
                                        rid=f"sw{s}")
                                   for s, a in enumerate([rows["attn"], None, rows["all"],
                                                          rows["attn"]])])

        asyncio.run(switching())
        row = engine.load_adapter(load_adapter("rslora", LORA / "rslora", tiny_model(MODEL)
                                               .config, max_rank=8))
        asyncio.run(_run(engine, prompt, row, rid="after-load"))
        engine.unload_adapter("rslora")
    assert compiles == []


# --- validation -------------------------------------------------------------------------------

@pytest.fixture
def adapter_copy(tmp_path):
    target = tmp_path / "adapter"
    shutil.copytree(LORA / "all", target)
    return target


def _edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "adapter_config.json").read_text())
    config.update(changes)
    (path / "adapter_config.json").write_text(json.dumps(config))


def _edit_tensors(path: Path, edit) -> None:
    tensors = load_file(str(path / "adapter_model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "adapter_model.safetensors"))


Q0 = "base_model.model.model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize("change, message", [
    ({"peft_type": "IA3"}, "peft_type is 'IA3'; only LORA"),
    ({"use_dora": True}, "DoRA adapters are not supported"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"target_modules": ["q_proj", "embed_tokens"]}, r"target_modules \['embed_tokens'\]"),
    ({"bias": "all"}, "bias 'all' is not supported"),
    ({"r": 64, "rank_pattern": {}}, "rank 64 of model.layers.0"),
])
def test_config_problems_are_refused_naming_file_and_problem(adapter_copy, tiny_model, change,
                                                             message):
    _edit_config(adapter_copy, **change)
    with pytest.raises(ConfigurationError, match=message) as error:
        load_adapter("x", adapter_copy, tiny_model(MODEL).config)
    assert "adapter" in str(error.value)


def test_rank_over_the_configured_maximum(tiny_model):
    with pytest.raises(ConfigurationError, match="exceeds the maximum LoRA rank 4"):
        load_adapter("x", LORA / "all", tiny_model(MODEL).config, max_rank=4)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.update({"base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight":
                         np.zeros((8, 64), np.float32)}), "names layer 9, but the base model "
                                                          "has 4 layers"),
    (lambda t: t.update({f"{Q0}.lora_A.weight": np.zeros((8, 32), np.float32)}),
     r"lora_A \[8, 32\] / lora_B \[96, 8\] do not fit"),
    (lambda t: t.update({"base_model.model.lm_head.lora_A.weight": np.zeros((8, 64))}),
     "is not a LoRA weight"),
    (lambda t: t.pop(f"{Q0}.lora_B.weight"), "without its pair"),
])
def test_tensor_problems_are_refused_naming_the_tensor(adapter_copy, tiny_model, edit,
                                                       message):
    _edit_tensors(adapter_copy, edit)
    with pytest.raises(ConfigurationError, match=message):
        load_adapter("x", adapter_copy, tiny_model(MODEL).config)


def test_missing_files_and_bad_names(adapter_copy, tiny_model, tmp_path):
    cfg = tiny_model(MODEL).config
    for bad in ("../x", "a/b", "", ".hidden", "x" * 65):
        with pytest.raises(ConfigurationError, match="is not allowed"):
            load_adapter(bad, adapter_copy, cfg)
    (adapter_copy / "adapter_model.safetensors").unlink()
    with pytest.raises(ConfigurationError, match="adapter_model.safetensors: missing"):
        load_adapter("x", adapter_copy, cfg)
    (adapter_copy / "adapter_config.json").unlink()
    with pytest.raises(ConfigurationError, match="adapter_config.json: missing"):
        load_adapter("x", adapter_copy, cfg)
    with pytest.raises(ConfigurationError, match="adapter directory not found"):
        load_adapter("x", tmp_path / "nowhere", cfg)


def test_language_model_prefix_is_accepted(adapter_copy, tiny_model):
    def rename(tensors):
        for key in list(tensors):
            tensors[key.replace("base_model.model.model.",
                                "base_model.model.language_model.model.")] = tensors.pop(key)

    _edit_tensors(adapter_copy, rename)
    adapter = load_adapter("x", adapter_copy, tiny_model(MODEL).config)
    reference = load_adapter("y", LORA / "all", tiny_model(MODEL).config)
    assert adapter.weights.keys() == reference.weights.keys()
