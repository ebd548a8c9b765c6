"""Every compiled (jitted) function of gemma_server lives here.

The config is a static argument (it is frozen and hashable, so equal configs share compiled
code); caches and slot state are donated, so a step updates them in place instead of copying.
The serving `Executor` compiles every shape it will ever run ahead of time (`warm_up`): insert,
decode, fork and one prefill per (rows, bucket) pair. Its steps call those compiled objects
directly, so a shape that was not compiled is an error, never a silent recompilation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from gemma_server.config import EngineConfig
from gemma_server.datatypes import SamplingParams
from gemma_server.engine import device_results, steps
from gemma_server.engine.compilation import CompileCount, use_compilation_cache
from gemma_server.engine.device_results import DecodeLaunch
from gemma_server.engine.sampling import SamplingRows
from gemma_server.errors import ConfigurationError
from gemma_server.host_memory import release_freed_memory
from gemma_server.kernels import cpu_attention
from gemma_server.kernels import library as kernels
from gemma_server.lora.adapter import LoraAdapter
from gemma_server.lora.stack import adapter_rows, empty_stacks
from gemma_server.model import sharding
from gemma_server.model.cache import KVCache, init_cache
from gemma_server.model.config import GemmaConfig
from gemma_server.model.forward import forward
from gemma_server.model.params import Params, compute_dtype


@partial(jax.jit, static_argnames="cfg", donate_argnames="cache")
def forward_step(
    params: Params, tokens: jax.Array, positions: jax.Array, cache: KVCache, cfg: GemmaConfig
) -> tuple[jax.Array, KVCache]:
    """One cached forward step (prefill chunk or decode); the input cache is consumed."""
    logits, new_cache = forward(params, tokens, positions, cache, cfg)
    assert new_cache is not None
    return logits, new_cache


@partial(jax.jit, static_argnames="cfg")
def full_forward(
    params: Params, tokens: jax.Array, positions: jax.Array, cfg: GemmaConfig
) -> jax.Array:
    """Logits of whole sequences without a cache (scoring, parity checks)."""
    logits, _ = forward(params, tokens, positions, None, cfg)
    return logits


# XLA's loop-invariant code motion hoists out of the multi-step decode loop what the steps
# compute from the weights alone, and materializes it once per call: on CPU, where a bfloat16
# gather is done in float32, the whole embedding table converted (131 MB at vocab 32000; a
# one-step call took 75 ms instead of 18). In one step those conversions fuse into the
# gather (one row), so the loop keeps them inside.
_DECODE_LOOP_OPTIONS = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}


def _abstract(tree: Any) -> Any:
    """Shapes, dtypes and (for arrays placed on a mesh) shardings of a tree's leaves."""
    def spec(a: Any) -> jax.ShapeDtypeStruct:
        sharding = a.sharding if isinstance(a, jax.Array) and a.committed else None
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)

    return jax.tree_util.tree_map(spec, tree)


class Executor:
    """Owns the device state of the engine (params, slot KV cache, slot sampling state) and the
    compiled steps that transform it. Host code passes numpy arrays in and gets numpy out."""

    def __init__(self, params: Params, cfg: GemmaConfig, config: EngineConfig,
                 vocab_limit: int | None = None, mesh: Mesh | None = None,
                 device: jax.Device | None = None):
        """With a `mesh` of several devices the model is tensor-parallel over it
        (model/sharding.py): parameters and KV cache split, everything else replicated.
        With a `device`, everything lives on that one device (a data-parallel replica)."""
        self.mesh = mesh if mesh is not None and mesh.size > 1 else None
        self.device = device if self.mesh is None else None
        if self.mesh is not None:
            params = sharding.shard_params(params, cfg, self.mesh)
        elif self.device is not None:
            params = jax.device_put(params, self.device)
        self.params, self.cfg, self.config = params, cfg, config
        self.slots = config.max_batch_size
        self.vocab_limit = min(vocab_limit or cfg.vocab_size, cfg.vocab_size)
        dtype = compute_dtype(params)
        self.cache: KVCache
        self.state: SamplingRows
        self.announce: Callable[[str, Any, tuple[Any, ...]], None] | None = None
        self._fresh_state()
        self.lora = (empty_stacks(cfg, config.max_loras, config.max_lora_rank, dtype)
                     if config.max_loras else None)
        if self.lora is not None and self._placement() is not None:
            self.lora = jax.device_put(self.lora, self._placement())
        # XLA:CPU's bfloat16 matmuls are several times slower with fewer than 8 rows than
        # with 8, so without our CPU kernels bfloat16 decode steps carry at least 8 (possibly
        # idle) slots; the kernels are fast at any row count (and unused on a mesh).
        slow_few_rows = dtype == jnp.bfloat16 and not (kernels.available() and
                                                      self.mesh is None)
        self.min_decode_rows = 8 if slow_few_rows else 1
        # XLA's decode attention reads the whole prefix it is given, so shorter prefixes get
        # their own steps; the CPU kernel reads only visible entries at any length (bf16 B=16,
        # 256 vs 2048: 22.5 ms both), so there one compiled length serves every step.
        kernel = self.mesh is None and cpu_attention.wanted(cfg.queries_per_kv,
                                                            self.cache.keys[0].dtype)
        self.attention_buckets = ((config.max_total_tokens,) if kernel
                                  else config.attention_buckets)
        self._prefill: dict[tuple[int, int], Any] = {}
        self._set_adapter: Any = None
        self._decode: dict[tuple[int, int], Any] = {}
        self._fork: Any = None
        self._insert: Any = None
        self.compile_seconds = 0.0
        self.compiled_at_warm_up = 0  # compilations (not cache loads) during warm_up
        self.cache_hits_at_warm_up = 0
        self._compiles_before_serving: int | None = None
        self._drawn: jax.Array | None = None  # the last decode step's tokens, on the device
        self._failed_on_device = False

    def memory_bytes(self) -> tuple[int, int]:
        """(parameter bytes, KV cache bytes) this executor holds on its device."""
        def total(tree: Any) -> int:
            return sum(int(leaf.nbytes) for leaf in jax.tree_util.tree_leaves(tree))

        return total(self.params), total(self.cache)

    # --- compilation -------------------------------------------------------------------------

    def warm_up(self, progress: Callable[[int, int, str], None] | None = None) -> float:
        """Compile every shape the engine uses; returns the seconds it took.

        Every shape is compiled ahead of time, so no request ever waits for XLA.
        `progress(done, total, shape)` is told before each compilation and once at the end.
        """
        start = time.perf_counter()
        compiled_before, hits_before = CompileCount.compiled(), CompileCount.cache_hits
        if self.config.compilation_cache_dir:
            use_compilation_cache(self.config.compilation_cache_dir)
        p, c, s = _abstract(self.params), _abstract(self.cache), _abstract(self.state)
        lo = _abstract(self.lora)
        i32, m, spec = jnp.int32, self.slots, self._spec
        kw: dict[str, Any] = {"cfg": self.cfg, "vocab_limit": self.vocab_limit}
        cache_and_state = ("cache", "state")
        decode = {n: self._jit(partial(steps.decode_block, attend_len=n,
                                       max_steps=self.config.decode_steps, **kw),
                               cache_and_state, "rrcr")
                  for n in self.attention_buckets}
        prefill = self._jit(partial(steps.prefill, **kw), cache_and_state, "rrcr")
        fork = self._jit(partial(steps.fork, vocab_limit=self.vocab_limit), cache_and_state,
                         "rcr")
        row = jax.tree_util.tree_map(lambda a: spec(a.shape, a.dtype), self._row_template())
        # A sharded model's products are XLA's: it cannot partition our CPU custom calls.
        tracing = kernels.kernels_off() if self.mesh is not None else nullcontext()
        with tracing:
            lowered: dict[Any, Any] = {
                "insert": self._jit(steps.insert, ("state",), "r").lower(s, spec((), i32), row),
                **{("decode", rows, n): decode[n].lower(
                    p, c, s, lo, spec((rows,), i32), spec((rows,), i32), spec((rows,), i32),
                    spec((), i32))
                   for rows, n in self.decode_shapes()},
                "fork": fork.lower(c, s, spec((), i32), spec((m,), i32),
                                   spec((self.cfg.vocab_size,), jnp.float32)),
            }
            if self.lora is not None:
                one = jax.tree_util.tree_map(lambda a: spec(a.shape[1:], a.dtype), self.lora)
                lowered["set_adapter"] = self._jit(steps.set_adapter, ("stacks",), "r").lower(
                    lo, spec((), i32), one)
            for rows, bucket in self.config.prefill_shapes():
                lowered[(rows, bucket)] = prefill.lower(
                    p, c, s, lo, spec((rows,), i32), spec((rows, bucket), i32),
                    spec((rows, bucket), i32), spec((rows,), i32), spec((rows,), jnp.bool_))

        # One at a time: on a few cores parallel compiles were no faster (53 s either way on
        # bench-150m, 2 cores) and each held its own LLVM working memory (peak RSS +0.4 GB).
        compiled = {}
        for done, (key, low) in enumerate(lowered.items()):
            if progress:
                progress(done, len(lowered), str(key))
            options = _DECODE_LOOP_OPTIONS if key[0] == "decode" else None
            compiled[key] = low.compile(compiler_options=options)
        if progress:
            progress(len(lowered), len(lowered), "")
        del lowered
        release_freed_memory()  # the compilers' freed working memory, back to the OS
        self._insert, self._fork = compiled.pop("insert"), compiled.pop("fork")
        self._decode = {shape: compiled.pop(("decode", *shape))
                        for shape in self.decode_shapes()}
        self._set_adapter = compiled.pop("set_adapter", None)
        self._prefill = compiled
        self.compile_seconds = time.perf_counter() - start
        self.compiled_at_warm_up = CompileCount.compiled() - compiled_before
        self.cache_hits_at_warm_up = CompileCount.cache_hits - hits_before
        self.mark_serving()
        return self.compile_seconds

    def decode_shapes(self) -> list[tuple[int, int]]:
        """Every (slots, cache length) decode shape this executor compiles and uses."""
        return [(rows, n) for rows in self.config.slot_buckets(self.min_decode_rows)
                for n in self.attention_buckets]

    def mark_serving(self) -> None:
        """From now on a compilation counts as one after warm-up (a pool of replicas marks
        each again once all have warmed up: the counts are per process)."""
        self._compiles_before_serving = CompileCount.compiled()

    def compilations_after_warm_up(self) -> int:
        """XLA compilations in this process since warm-up ended (0 while serving is the
        design: every shape is compiled ahead; anything else means a stray eager op)."""
        if self._compiles_before_serving is None:
            return 0
        return CompileCount.compiled() - self._compiles_before_serving

    def _row_template(self) -> SamplingRows:
        """A slot's sampling row (its shapes and types are what `insert` is compiled for)."""
        return steps.host_row(self.cfg.vocab_size)

    # --- steps ---------------------------------------------------------------------------------

    def set_adapter(self, row: int, adapter: LoraAdapter | None) -> None:
        """Write an adapter into row `row` of the LoRA stacks (None: zeros, i.e. unload)."""
        if self.lora is None or self._set_adapter is None:
            raise ConfigurationError("LoRA adapters need max_loras >= 1 (--max-loras)")
        rows = adapter_rows(adapter, self.cfg, self.config.max_lora_rank,
                            compute_dtype(self.params))
        self._apply("set_adapter", None, (np.int32(row), rows))

    def insert(self, slot: int, sampling: SamplingParams, seed: int, adapter: int = 0,
               top_logprobs: bool = False) -> None:
        """Install a request's sampling parameters, 64-bit seed, LoRA row and whether it wants
        top logprobs into a slot."""
        row = steps.host_row(self.cfg.vocab_size, sampling, seed, adapter, top_logprobs)
        self._apply("insert", None, (np.int32(slot), row))

    def state_lost(self) -> bool:
        """True when a failed step had already consumed (donated) the cache or state, or
        failed while running (its outputs are the cache and state now)."""
        if self._failed_on_device:
            return True
        leaves = [*self.cache.keys, *self.cache.values, *jax.tree_util.tree_leaves(self.state)]
        return any(leaf.is_deleted() for leaf in leaves)

    def reset(self) -> None:
        """Fresh cache and state, after a failed step may have consumed the donated ones."""
        self._apply("reset", None, ())

    def _fresh_state(self) -> None:
        """A zeroed cache and neutral sampling rows, placed on the mesh if there is one."""
        dtype = compute_dtype(self.params)
        self.cache = init_cache(self.cfg, self.slots, self.config.max_total_tokens, dtype)
        self.state = steps.init_state(self.slots, self.cfg.vocab_size)
        if self.mesh is not None:
            self.cache = jax.device_put(
                self.cache, sharding.cache_shardings(self.cache, self.cfg, self.mesh))
        if self._placement() is not None:
            self.state = jax.device_put(self.state, self._placement())
            if self.mesh is None:
                self.cache = jax.device_put(self.cache, self._placement())

    def _placement(self) -> Any:
        """Where small state and host inputs go: replicated on a mesh, or the one device of a
        data-parallel replica; None: JAX's default device."""
        if self.mesh is not None:
            return sharding.replicated(self.mesh)
        if self.device is not None:
            return jax.sharding.SingleDeviceSharding(self.device)
        return None

    def _spec(self, shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
        """A host input of a step (token ids, slots...), placed like the small state."""
        return jax.ShapeDtypeStruct(shape, dtype, sharding=self._placement())

    def _jit(self, fn: Callable[..., Any], donate: tuple[str, ...], outputs: str) -> Any:
        """jax.jit, with the output layouts pinned on a mesh: the KV cache stays split as it
        came in (`c` in `outputs`), everything else replicated (`r`)."""
        if self.mesh is None:
            return jax.jit(fn, donate_argnames=donate)
        rep = sharding.replicated(self.mesh)
        kv = sharding.cache_shardings(self.cache, self.cfg, self.mesh)
        out = tuple(kv if o == "c" else rep for o in outputs)
        return jax.jit(fn, donate_argnames=donate, out_shardings=out[0] if len(out) == 1
                       else out)

    def prefill(self, slots: np.ndarray, tokens: np.ndarray, positions: np.ndarray,
                last: np.ndarray, final: np.ndarray) -> tuple[dict[str, np.ndarray], jax.Array]:
        drawn, logits = self._apply("prefill", tokens.shape,
                                    (slots, tokens, positions, last, final))
        return device_results.to_host(drawn), logits

    def fork(self, source: int, targets: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
        drawn = self._apply("fork", None, (np.int32(source), targets, logits))
        return device_results.to_host(drawn)

    def decode_rows(self, positions: np.ndarray) -> int:
        """The compiled row count of a decode step over these positions: the fewest leading
        slots that hold every active one."""
        active = np.flatnonzero(positions >= 0)
        return next(r for r in self.config.slot_buckets(self.min_decode_rows)
                    if r > active.max())

    def launch_decode(self, tokens: np.ndarray | None, positions: np.ndarray,
                      budgets: np.ndarray) -> DecodeLaunch:
        """Start decoding over the fewest leading slots that hold every active one, attending
        over the shortest cache prefix that holds every position (both from compiled
        buckets), without waiting for it.

        `budgets[s]`: how many steps slot s runs in this call (0 for an inactive slot, else 1
        to `config.decode_steps`): the call runs as many steps as the largest, each fed the
        last one's tokens. `tokens=None` feeds back the tokens the previous call drew last,
        still on the device: the engine then launches call N+1 before it reads call N's
        tokens, so the host's work on them overlaps the device's (the previous call must have
        had the same row count, see `decode_rows`)."""
        rows = self.decode_rows(positions)
        count = int(budgets.max())
        if not 1 <= count <= self.config.decode_steps:
            raise ValueError(f"a decode call runs 1 to {self.config.decode_steps} steps, "
                             f"not {count}")
        needed = int(np.max(np.where(positions >= 0, positions + budgets, 0)))
        length = next(n for n in self.attention_buckets if n >= needed)
        if tokens is None:
            if self._drawn is None or self._drawn.shape[0] != rows:
                raise ValueError("no previous decode step of this row count to feed back")
            # Followers of a multi-host slice are told host inputs: read the tokens first.
            fed: Any = self._drawn if self.announce is None else device_results.local(self._drawn)
        else:
            fed = tokens[:rows]
        self._drawn = None  # consumed, or about to be replaced
        drawn, self._drawn = self._apply("decode", (rows, length), (
            fed, positions[:rows], budgets[:rows].astype(np.int32), np.int32(count)))
        return DecodeLaunch(drawn, count, self.step_failed_on_device)

    def step_failed_on_device(self) -> None:
        """A launched step failed while it ran: the cache and state it produced are unusable
        (and the donated ones it consumed are gone), so `state_lost` is now true."""
        self._failed_on_device = True

    def host_row(self, logits: jax.Array, row: int) -> np.ndarray:
        """One row of a prefill's logits, on the host (from this process's copy)."""
        return device_results.local(logits)[row]

    def _apply(self, op: str, key: Any, args: tuple[Any, ...]) -> Any:
        """Run one compiled step on the device state. Every change of that state goes
        through here, so that `announce` (set on process 0 of a multi-host slice) can tell
        the other processes each step, with its host inputs, before it runs: they replay it
        with `replay` and all launch the same programs in the same order, as SPMD needs."""
        if self.announce is not None:
            self.announce(op, key, args)
        if op != "decode":
            self._drawn = None  # only a decode's own successor may feed its tokens back
        if op == "decode":
            drawn, last, self.cache, self.state = self._decode[key](
                self.params, self.cache, self.state, self.lora, *args)
            return drawn, last
        if op == "prefill":
            drawn, logits, self.cache, self.state = self._prefill[key](
                self.params, self.cache, self.state, self.lora, *args)
            return drawn, logits
        if op == "insert":
            self.state = self._insert(self.state, *args)
        elif op == "fork":
            drawn, self.cache, self.state = self._fork(self.cache, self.state, *args)
            return drawn
        elif op == "set_adapter":
            self.lora = self._set_adapter(self.lora, *args)
        elif op == "reset":
            self._fresh_state()
            self._failed_on_device, self._drawn = False, None
        else:
            raise ValueError(f"unknown step {op!r}")
        return None

    def replay(self, op: str, key: Any, args: tuple[Any, ...]) -> None:
        """A step announced by process 0 (see `_apply`), run here the same way."""
        self._apply(op, key, args)

    def step_templates(self) -> dict[str, Any]:
        """The pytree structure of the host inputs of steps whose inputs are not flat
        (what a follower needs to rebuild them from arrays): insert's row, set_adapter's."""
        templates: dict[str, Any] = {"insert": (np.int32(0), self._row_template())}
        if self.lora is not None:
            templates["set_adapter"] = (np.int32(0), adapter_rows(
                None, self.cfg, self.config.max_lora_rank, compute_dtype(self.params)))
        return templates

    def prefill_shapes(self) -> list[tuple[int, int]]:
        return sorted(self._prefill)
