"""Checkpoint loading: layouts the Hub uses, and a clear error for each way it can be wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from gemma_server.engine.executor import full_forward
from gemma_server.errors import CheckpointError, ConfigurationError
from gemma_server.host_memory import HUGE_PAGE, HugePageArena
from gemma_server.model import checkpoint as checkpoint_module
from gemma_server.model.checkpoint import load_checkpoint
from gemma_server.model.hf_config import config_from_hf_dict
from gemma_server.model.synthetic import write_checkpoint
from gemma_server.model.tiny import TINY_GEMMA2, TINY_GEMMA3
from tests.conftest import golden

G3_CFG = config_from_hf_dict(dict(TINY_GEMMA3.hf_config))


def _logits(checkpoint) -> np.ndarray:
    ids = jnp.asarray(golden("tiny-gemma3")["ids_1"])[None]
    return np.asarray(full_forward(checkpoint.params, ids, jnp.arange(ids.shape[1])[None],
                                   checkpoint.config))


@pytest.fixture(scope="module")
def reference(tiny_model):
    return _logits(tiny_model("tiny-gemma3"))


def test_sharded_checkpoint_with_index_loads_the_same(tmp_path, reference):
    path = write_checkpoint(TINY_GEMMA3, tmp_path, G3_CFG, shards=3)
    assert len(list(path.glob("*.safetensors"))) == 3
    assert (path / "model.safetensors.index.json").exists()
    np.testing.assert_array_equal(_logits(load_checkpoint(path, progress=False)), reference)


@pytest.mark.parametrize("prefix", ["language_model.model.", "model.language_model."])
def test_multimodal_gemma3_layout_loads_the_text_decoder(tmp_path, prefix, reference):
    path = write_checkpoint(TINY_GEMMA3, tmp_path, G3_CFG, prefix=prefix)
    text_config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({
        "model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
        "text_config": text_config, "vision_config": {"model_type": "siglip_vision_model"},
    }))
    tensors = load_file(str(path / "model.safetensors"))
    tensors["vision_tower.vision_model.post_layernorm.weight"] = np.ones(4, np.float32)
    tensors["multi_modal_projector.mm_input_projection_weight"] = np.ones((4, 4), np.float32)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    np.testing.assert_array_equal(_logits(load_checkpoint(path, progress=False)), reference)


def test_tied_checkpoint_with_a_redundant_lm_head_ignores_it(tmp_path, reference):
    path = write_checkpoint(TINY_GEMMA3, tmp_path, G3_CFG)
    tensors = load_file(str(path / "model.safetensors"))
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    checkpoint = load_checkpoint(path, progress=False)
    assert "lm_head" not in checkpoint.params
    np.testing.assert_array_equal(_logits(checkpoint), reference)


def test_untied_head_is_loaded_and_used(tiny_model):
    checkpoint = tiny_model("tiny-gemma2")
    assert not checkpoint.config.tie_word_embeddings
    head, embed = checkpoint.params["lm_head"], checkpoint.params["embed"]
    assert head.shape == embed.shape  # [V, D], both in HF's orientation
    assert not np.allclose(np.asarray(head), np.asarray(embed))


def test_bfloat16_checkpoint_files_load_as_float32(tmp_path, reference):
    path = write_checkpoint(TINY_GEMMA3, tmp_path, G3_CFG, dtype="bfloat16")
    checkpoint = load_checkpoint(path, dtype="float32", progress=False)
    assert checkpoint.params["embed"].dtype == jnp.float32
    # bf16-rounded weights: close to, not equal to, the float32 reference.
    assert np.abs(_logits(checkpoint) - reference).max() < 0.5


def _rewrite(path: Path, edit) -> None:
    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture
def g2_dir(tmp_path) -> Path:
    return write_checkpoint(TINY_GEMMA2, tmp_path / "g2",
                            config_from_hf_dict(dict(TINY_GEMMA2.hf_config)))


def test_missing_tensor_is_named(g2_dir):
    _rewrite(g2_dir, lambda t: t.pop("model.layers.2.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor layers\.2\.mlp\.up_proj\.weight"):
        load_checkpoint(g2_dir, progress=False)


def test_missing_untied_head_is_named(g2_dir):
    _rewrite(g2_dir, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor lm_head\.weight"):
        load_checkpoint(g2_dir, progress=False)


def test_extra_tensor_is_named(g2_dir):
    _rewrite(g2_dir, lambda t: t.update({"model.layers.9.mlp.up_proj.weight": np.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor model\.layers\.9\.mlp"):
        load_checkpoint(g2_dir, progress=False)


def test_misshaped_tensor_is_named_with_both_shapes(g2_dir):
    _rewrite(g2_dir, lambda t: t.update(
        {"model.layers.1.self_attn.k_proj.weight": np.zeros((40, 64), np.float32)}))
    with pytest.raises(CheckpointError,
                       match=r"k_proj\.weight has shape \[40, 64\], expected \[48, 64\]"):
        load_checkpoint(g2_dir, progress=False)


def test_unsupported_model_type_is_named(g2_dir):
    config = json.loads((g2_dir / "config.json").read_text())
    (g2_dir / "config.json").write_text(json.dumps({**config, "model_type": "mistral"}))
    with pytest.raises(ConfigurationError, match="unsupported model_type 'mistral'"):
        load_checkpoint(g2_dir, progress=False)


def test_float16_is_refused_with_the_reason(g2_dir):
    with pytest.raises(CheckpointError, match="overflow"):
        load_checkpoint(g2_dir, dtype="float16", progress=False)


def test_missing_shard_and_missing_files_are_reported(tmp_path):
    path = write_checkpoint(TINY_GEMMA3, tmp_path / "sharded", G3_CFG, shards=2)
    next(path.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="shard model-00002-of-00002.safetensors"):
        load_checkpoint(path, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(path / "config.json", empty / "config.json")
    with pytest.raises(CheckpointError, match="no \\*.safetensors files"):
        load_checkpoint(empty, progress=False)
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_checkpoint(tmp_path / "does-not-exist", progress=False)


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_weights_on_cpu_live_in_one_huge_page_arena(tmp_path, quantize, monkeypatch):
    """On CPU (with transparent huge pages) every weight, int8 values and scales too, is used
    in place from one 2 MB-aligned arena advised into huge pages, each 64-byte aligned,
    holding the values it was loaded with (compared with a load that skips the move)."""
    path = write_checkpoint(TINY_GEMMA3, tmp_path, G3_CFG)
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_module, "move_into_huge_pages", lambda tree: None)
        plain = load_checkpoint(path, quantize=quantize, progress=False).params
    # where the kernel has no huge pages the arena is ordinary memory, used all the same
    monkeypatch.setattr(checkpoint_module, "transparent_huge_pages", lambda: True)
    arenas: list[HugePageArena] = []
    make = HugePageArena.__init__

    def recording(self, nbytes):
        make(self, nbytes)
        arenas.append(self)

    monkeypatch.setattr(HugePageArena, "__init__", recording)
    moved = load_checkpoint(path, quantize=quantize, progress=False).params
    (arena,) = arenas
    start = arena.address
    assert start % HUGE_PAGE == 0
    leaves, expected = jax.tree_util.tree_leaves(moved), jax.tree_util.tree_leaves(plain)
    for leaf, want in zip(leaves, expected, strict=True):
        address = leaf.unsafe_buffer_pointer()
        assert start <= address and address + leaf.nbytes <= start + arena.size
        assert address % 64 == 0
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(want))
