"""The memory planner counts what the devices will hold: on one device, exactly the bytes of
the loaded parameters and of the KV cache; over N devices, 1/N of every split part and the
whole of every replicated one (checked against a second count built from `tensor_specs`)."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from gemma_server.errors import ConfigurationError
from gemma_server.model.cache import cache_bytes, init_cache
from gemma_server.model.config import PRESETS, GemmaConfig, preset
from gemma_server.model.hf_config import config_from_hf_dict
from gemma_server.model.memory_plan import GIB, check_fits, describe, plan_memory
from gemma_server.model.params import tensor_specs
from gemma_server.model.quantize import weight_bytes
from gemma_server.model.tiny import TINY_SPECS
from tests.conftest import ARCHS

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "scripts" / "plan_memory.py"


def _script():
    spec = importlib.util.spec_from_file_location("plan_memory", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["plan_memory"] = module
    spec.loader.exec_module(module)
    return module


def _tiny(name: str) -> GemmaConfig:
    return config_from_hf_dict(dict(TINY_SPECS[name].hf_config))


G27 = config_from_hf_dict(_script().GEMMA2_27B_HF_CONFIG)
CONFIGS = {**{name: _tiny(name) for name in ARCHS}, **PRESETS}
ITEMSIZE = {"float32": 4, "bfloat16": 2}

# the split rule of each [out, in] matrix: 0 along its outputs, 1 along its inputs
_SPLIT = {"embed": 0, "lm_head": 0, "q": 0, "k": 0, "v": 0, "gate": 0, "up": 0, "o": 1,
          "down": 1}


def _reference_bytes(cfg: GemmaConfig, dtype: str, quantize: str | None, n: int) -> int:
    """A second count, tensor by tensor over params.py's layout."""
    total = 0
    for spec in tensor_specs(cfg):
        name = spec.path[-1]
        axis = _SPLIT.get(str(name))
        if name in ("k", "v") and cfg.num_kv_heads % n:
            axis = None  # all KV heads on every device
        shape = [math.ceil(s / n) if i == axis else s for i, s in enumerate(spec.shape)]
        if quantize is None or len(shape) == 1:
            total += math.prod(shape) * ITEMSIZE[dtype]
        else:
            total += math.prod(shape) + 4 * shape[0]
    return total


def _plan(cfg: GemmaConfig, n: int = 1, dtype: str = "bfloat16", quantize: str | None = None,
          slots: int = 8, tokens: int = 2048):
    return plan_memory(cfg, dtype, quantize, n, slots, tokens)


@pytest.mark.parametrize("quantize", [None, "int8"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_one_device_holds_every_parameter(name, dtype, quantize):
    cfg = CONFIGS[name]
    plan = _plan(cfg, 1, dtype, quantize)
    assert plan.weights_bytes_per_device == weight_bytes(cfg, jnp.dtype(dtype), quantize)
    if quantize is None:
        params = sum(math.prod(s.shape) for s in tensor_specs(cfg))
        assert plan.weights_bytes_per_device == params * ITEMSIZE[dtype]
        if cfg.use_post_norms:  # num_params counts 4 norms a layer: Gemma 1 has 2
            assert plan.weights_bytes_per_device == cfg.num_params() * ITEMSIZE[dtype]


# int8 loading compiles a quantizer per shape (~2.5 s a model): one model, the untied head
@pytest.mark.parametrize(("name", "dtype", "quantize"),
                         [*((name, "float32", None) for name in ARCHS),
                          ("tiny-gemma", "bfloat16", None), ("tiny-gemma2", "bfloat16", "int8")])
def test_one_device_equals_a_loaded_checkpoint(name, dtype, quantize, tiny_model):
    model = tiny_model(name, dtype, quantize)
    loaded = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(model.params))
    assert _plan(model.config, 1, dtype, quantize).weights_bytes_per_device == loaded


@pytest.mark.parametrize("quantize", [None, "int8"])
@pytest.mark.parametrize("name", [*ARCHS, "gemma-2b", "gemma-2-27b", "gemma-3-27b"])
def test_n_devices_hold_their_slices_and_the_replicated_parts(name, quantize):
    cfg = CONFIGS[name]
    for n in (m for m in (1, 2, 4, 8) if cfg.num_heads % m == 0):
        plan = _plan(cfg, n, "bfloat16", quantize)
        assert plan.weights_bytes_per_device == _reference_bytes(cfg, "bfloat16", quantize, n)
        assert plan.kv_heads_replicated == (cfg.num_kv_heads % n != 0)


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_splitting_the_27b_divides_all_but_the_norms(quantize):
    whole = _plan(G27, 1, quantize=quantize)
    norms = (4608 + 46 * 4 * 4608) * 2  # final norm + 4 per layer, bfloat16
    scales = 46 * 2 * 4608 * 4 if quantize else 0  # o and down keep every output row's scale
    assert whole.replicated_weights_bytes == norms + scales
    for n in (2, 4, 8):
        plan = _plan(G27, n, quantize=quantize)
        assert plan.replicated_weights_bytes == norms + scales
        split = plan.weights_bytes_per_device - plan.replicated_weights_bytes
        assert split * n == whole.weights_bytes_per_device - whole.replicated_weights_bytes
        assert plan.kv_cache_bytes_per_device * n == whole.kv_cache_bytes_per_device
        assert not plan.kv_heads_replicated


@pytest.mark.parametrize("cfg", [preset("gemma-2b"), _tiny("tiny-gemma"),
                                 dataclasses.replace(G27, num_kv_heads=1)],
                         ids=["gemma-2b", "tiny-gemma", "27b-mqa"])
def test_mqa_keeps_every_kv_head_on_every_device(cfg):
    """K=1: each device holds the whole cache, N times the share a split would give it."""
    one = _plan(cfg, 1)
    for n in (2, 4):
        plan = _plan(cfg, n)
        assert plan.kv_heads_replicated
        assert plan.kv_cache_bytes_per_device == n * (one.kv_cache_bytes_per_device // n)
        assert "all KV heads" in describe(plan)


@pytest.mark.parametrize("tokens", [5, 8, 64, 2048])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", [*ARCHS, "gemma-2-27b", "gemma-3-1b"])
def test_one_device_kv_equals_cache_bytes(name, dtype, tokens):
    cfg = CONFIGS[name]
    plan = _plan(cfg, 1, dtype, slots=3, tokens=tokens)
    assert plan.kv_cache_bytes_per_device == cache_bytes(cfg, 3, tokens, jnp.dtype(dtype))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_one_device_kv_equals_an_allocated_cache(dtype):
    cfg = _tiny("tiny-gemma3")  # sliding window 8 < 20 tokens: ring buffers
    cache = init_cache(cfg, 2, 20, jnp.dtype(dtype))
    allocated = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(cache))
    assert _plan(cfg, 1, dtype, slots=2, tokens=20).kv_cache_bytes_per_device == allocated


def test_check_fits_names_the_numbers_and_only_what_helps():
    check_fits(_plan(G27, 4), 24 * GIB)  # fits: no error
    with pytest.raises(ConfigurationError) as err:
        check_fits(_plan(G27, 1), 24 * GIB)
    message = str(err.value)
    for text in ("tensor parallel 1, bfloat16", "weights 50.7 GiB", "KV cache 5.8 GiB",
                 "= 56.5 GiB", "a device has 24.0 GiB", "21.6 GiB usable at 90%",
                 "--tensor-parallel 4 or more"):
        assert text in message
    # int8 alone, fewer slots or fewer tokens would not fit: the weights alone are 50.7 GiB
    for text in ("--quantize", "--max-batch-size", "--max-total-tokens"):
        assert text not in message
    with pytest.raises(ConfigurationError, match="--quantize int8"):
        check_fits(_plan(G27, 1, slots=32), 80 * GIB)


def test_check_fits_suggests_limits_that_fit():
    plan = _plan(G27, 1, quantize="int8", slots=128)
    usable = int(80 * GIB * 0.9)
    with pytest.raises(ConfigurationError) as err:
        check_fits(plan, 80 * GIB)
    message = str(err.value)
    # 32 devices would no longer split the 16 KV heads: 92 GiB of cache on each
    assert "use --tensor-parallel 2/4/8/16, --max-batch-size" in message
    assert "--quantize" not in message  # already int8
    slots = int(re.search(r"--max-batch-size (\d+) or fewer", message).group(1))
    assert _plan(G27, 1, quantize="int8", slots=slots).total_bytes_per_device <= usable
    assert _plan(G27, 1, quantize="int8", slots=slots + 1).total_bytes_per_device > usable
    tokens = int(re.search(r"--max-total-tokens (\d+) or fewer", message).group(1))
    fits = _plan(G27, 1, quantize="int8", slots=128, tokens=tokens)
    assert fits.total_bytes_per_device <= usable
    over = _plan(G27, 1, quantize="int8", slots=128, tokens=tokens + 1)
    assert over.total_bytes_per_device > usable


def test_check_fits_says_when_nothing_helps():
    with pytest.raises(ConfigurationError, match="no single change") as err:
        check_fits(_plan(G27, 1), 1 * GIB)
    assert " use " not in str(err.value)


def test_check_fits_combines_tensor_parallel_and_int8_when_neither_fits_alone():
    """27B on 3 GiB: 16 devices in bfloat16 hold 3.5 GiB each; 32 devices no longer split the
    16 KV heads (5.8 GiB each), so only 16 devices with int8 weights fit, not "or more"."""
    with pytest.raises(ConfigurationError) as err:
        check_fits(_plan(G27, 1), 3 * GIB)
    assert str(err.value).endswith("; use --tensor-parallel 16 with --quantize int8")


@pytest.mark.parametrize("n", [3, 5, 64])
def test_heads_not_divisible_are_refused(n):
    with pytest.raises(ConfigurationError, match=f"--tensor-parallel {n} does not divide the "
                       "model's 32 attention heads"):
        _plan(G27, n)
    with pytest.raises(ConfigurationError, match="at least 1"):
        _plan(G27, 0)


def test_describe_is_one_line():
    line = describe(_plan(G27, 2, quantize="int8"))
    assert "\n" not in line
    assert "tensor parallel 2, int8 weights" in line
    assert "8 slots x 2048 tokens" in line
    assert "weights 12.7 GiB + KV cache 2.9 GiB = 15.6 GiB" in line


def test_script_table_is_the_documented_one():
    script = _script()
    assert preset("gemma-2-27b") == G27
    table = script.table(G27)
    lines = table.splitlines()
    assert len(lines) == 2 + 8
    assert lines[2] == ("| bfloat16 | 1 | 50.7 GiB | 5.8 GiB | 56.5 GiB | does not fit | fits "
                        "| does not fit |")
    assert table in (ROOT / "docs" / "memory_plan.md").read_text()
