"""The memory planner: the bytes each device holds under N-way tensor parallelism.

A pure function of the model config and the serving limits (no devices, no weights), so a
configuration that cannot fit is refused at start-up, before minutes of loading, with the
numbers that decide it and the changes that would make it fit. `scripts/plan_memory.py`
prints the plan of any model for several device sizes (docs/memory_plan.md).

The layout it counts (HF `[out, in]` matrices, params.py) over a mesh axis of N devices:

- embed / lm_head [V, D]: split along V (V/N rows each);
- q [H*Hd, D] by heads (N must divide H); k, v [K*Hd, D] by KV heads when N divides K,
  else whole on every device (MQA); o [D, H*Hd] along its input, by heads;
- gate, up [F, D] and down [D, F] along F; norms (and q/k norms) whole on every device;
- int8: 1 byte per weight + one float32 scale per output row; the scales split with the
  rows, so a matrix split along its input (o, down) keeps all its scales on every device;
- KV cache: 2 x L x [slots, K, cache_length, Hd] in the compute dtype, split like k and v;
- a dimension N does not divide is kept whole on every device (as model/sharding.py does).
"""

from __future__ import annotations

import dataclasses

from gemma_server.errors import ConfigurationError
from gemma_server.model.config import GemmaConfig

# bytes per element of the compute dtypes (bfloat16 KV entries are stored as 2-byte bits)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_INT8_SCALE_BYTES = 4  # one float32 per output row
GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes one device holds (the largest share where a split is uneven)."""

    config: GemmaConfig = dataclasses.field(repr=False)
    dtype: str
    quantize: str | None
    tensor_parallel: int
    slots: int
    max_total_tokens: int
    weights_bytes_per_device: int
    kv_cache_bytes_per_device: int
    replicated_weights_bytes: int  # the part of the weights every device holds in full
    kv_heads_replicated: bool  # k, v and the KV cache whole on every device (N does not divide K)

    @property
    def total_bytes_per_device(self) -> int:
        return self.weights_bytes_per_device + self.kv_cache_bytes_per_device


def plan_memory(cfg: GemmaConfig, dtype: str, quantize: str | None, tensor_parallel: int,
                slots: int, max_total_tokens: int) -> MemoryPlan:
    """Per-device bytes of the weights and the KV cache of `cfg` split `tensor_parallel` ways."""
    n = tensor_parallel
    _check_inputs(cfg, dtype, quantize, n, slots, max_total_tokens)
    kv_replicated = cfg.num_kv_heads % n != 0
    split, whole = _weight_bytes(cfg, DTYPE_BYTES[dtype], quantize, n, kv_replicated)
    kv_heads = cfg.num_kv_heads if kv_replicated else cfg.num_kv_heads // n
    entries = sum(cfg.cache_length(i, max_total_tokens) for i in range(cfg.num_layers))
    kv = 2 * slots * entries * kv_heads * cfg.head_dim * DTYPE_BYTES[dtype]
    return MemoryPlan(
        config=cfg, dtype=dtype, quantize=quantize, tensor_parallel=n, slots=slots,
        max_total_tokens=max_total_tokens, weights_bytes_per_device=split + whole,
        kv_cache_bytes_per_device=kv, replicated_weights_bytes=whole,
        kv_heads_replicated=kv_replicated,
    )


def _check_inputs(cfg: GemmaConfig, dtype: str, quantize: str | None, n: int, slots: int,
                  max_total_tokens: int) -> None:
    if dtype not in DTYPE_BYTES:
        raise ConfigurationError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_BYTES)}")
    if quantize not in (None, "int8"):
        raise ConfigurationError(f"unknown quantization {quantize!r}; use int8 or none")
    if n < 1:
        raise ConfigurationError(f"--tensor-parallel must be at least 1, not {n}")
    if cfg.num_heads % n:
        raise ConfigurationError(
            f"--tensor-parallel {n} does not divide the model's {cfg.num_heads} attention "
            f"heads (H % N must be 0); use one of {', '.join(map(str, _degrees(cfg)))}")
    if slots < 1 or max_total_tokens < 1:
        raise ConfigurationError(f"slots ({slots}) and max_total_tokens ({max_total_tokens}) "
                                 "must be at least 1")


def _degrees(cfg: GemmaConfig) -> list[int]:
    """The tensor-parallel degrees a config accepts: the divisors of its head count."""
    return [n for n in range(1, cfg.num_heads + 1) if cfg.num_heads % n == 0]


def _weight_bytes(cfg: GemmaConfig, itemsize: int, quantize: str | None, n: int,
                  kv_replicated: bool) -> tuple[int, int]:
    """(bytes of this device's slices, bytes it holds whole) of all the parameters."""
    d, f, hd, layers = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.num_layers
    q_rows, kv_rows = cfg.num_heads * hd, cfg.num_kv_heads * hd
    split = whole = 0

    def matrix(rows: int, cols: int, axis: int | None, count: int = 1) -> None:
        """A [rows (out), cols (in)] matrix split along `axis` (None: not split). Like
        sharding.py, a dimension N does not divide is kept whole on every device."""
        nonlocal split, whole
        if axis is not None and (rows, cols)[axis] % n:
            axis = None
        r = rows // n if axis == 0 else rows
        c = cols // n if axis == 1 else cols
        if quantize is None:
            values, scales = r * c * itemsize, 0
        else:
            values, scales = r * c, r * _INT8_SCALE_BYTES
        if axis is None:
            whole += count * (values + scales)
        elif axis == 0:
            split += count * (values + scales)
        else:  # split along the input: every device keeps every output row's scale
            split += count * values
            whole += count * scales

    matrix(cfg.vocab_size, d, 0, 1 if cfg.tie_word_embeddings else 2)  # embed (, lm_head)
    matrix(q_rows, d, 0, layers)  # q
    matrix(kv_rows, d, None if kv_replicated else 0, 2 * layers)  # k, v
    matrix(d, q_rows, 1, layers)  # o
    matrix(f, d, 0, 2 * layers)  # gate, up
    matrix(d, f, 1, layers)  # down
    norms = (4 if cfg.use_post_norms else 2) * d + (2 * hd if cfg.use_qk_norm else 0)
    whole += (d + layers * norms) * itemsize  # never quantized
    return split, whole


def check_fits(plan: MemoryPlan, device_bytes: int, usable_fraction: float = 0.9) -> None:
    """Refuse a plan that needs more than `usable_fraction` of a device: the rest is left to
    activations, compiled programs and the runtime. The message names the numbers and only
    the changes that, each on its own, would make the plan fit."""
    usable = int(device_bytes * usable_fraction)
    if plan.total_bytes_per_device <= usable:
        return
    remedies = _remedies(plan, usable)
    advice = f"; use {_join(remedies)}" if remedies else (
        "; no single change (a larger --tensor-parallel, with or without --quantize int8, "
        "fewer --max-batch-size slots or a smaller --max-total-tokens) makes it fit")
    raise ConfigurationError(
        f"the model does not fit ({_setting(plan)}): per device: "
        f"weights {_gib(plan.weights_bytes_per_device)} + "
        f"KV cache {_gib(plan.kv_cache_bytes_per_device)} = "
        f"{_gib(plan.total_bytes_per_device)}, but a device has {_gib(device_bytes)} "
        f"({_gib(usable)} usable at {usable_fraction:.0%}){advice}")


def _remedies(plan: MemoryPlan, usable: int) -> list[str]:
    cfg, out = plan.config, []

    def fits(n: int = plan.tensor_parallel, quantize: str | None = plan.quantize) -> bool:
        other = plan_memory(cfg, plan.dtype, quantize, n, plan.slots, plan.max_total_tokens)
        return other.total_bytes_per_device <= usable

    larger = [m for m in _degrees(cfg) if m > plan.tensor_parallel]
    if degrees := _degrees_advice(larger, [fits(n=m) for m in larger]):
        out.append(degrees)
    if plan.quantize is None and fits(quantize="int8"):
        out.append("--quantize int8")
    both = "" if out or plan.quantize else _degrees_advice(  # neither alone: both together?
        larger, [fits(n=m, quantize="int8") for m in larger])
    if both:
        out.append(f"{both} with --quantize int8")
    room = usable - plan.weights_bytes_per_device
    per_slot = plan.kv_cache_bytes_per_device // plan.slots
    if room >= per_slot and plan.slots > 1:
        out.append(f"--max-batch-size {room // per_slot} or fewer")
    tokens = _most_tokens(plan, usable)
    if tokens >= 2:
        out.append(f"--max-total-tokens {tokens} or fewer")
    return out


def _degrees_advice(larger: list[int], fit: list[bool]) -> str:
    """"--tensor-parallel M or more", or the list of degrees that fit where a larger one does
    not (it replicates KV heads it can no longer split); "" when none fits."""
    degrees = [m for m, ok in zip(larger, fit, strict=True) if ok]
    if not degrees:
        return ""
    if all(fit[larger.index(degrees[0]):]):
        return f"--tensor-parallel {degrees[0]} or more"
    return f"--tensor-parallel {'/'.join(map(str, degrees))}"


def _most_tokens(plan: MemoryPlan, usable: int) -> int:
    """The largest max_total_tokens below the plan's that fits (0: none); KV bytes grow with
    it monotonically, so a bisection finds it."""
    lo, hi = 0, plan.max_total_tokens - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        candidate = plan_memory(plan.config, plan.dtype, plan.quantize, plan.tensor_parallel,
                                plan.slots, mid)
        if candidate.total_bytes_per_device <= usable:
            lo = mid
        else:
            hi = mid - 1
    return lo


def describe(plan: MemoryPlan) -> str:
    """One line for the start-up log."""
    replicated = ["norms"] + (["o/down int8 scales"] if plan.quantize else []) + (
        ["k/v and the KV cache (all KV heads)"] if plan.kv_heads_replicated else [])
    return (f"memory plan ({_setting(plan)}, {plan.slots} slots x {plan.max_total_tokens} "
            f"tokens): per device weights {_gib(plan.weights_bytes_per_device)} + "
            f"KV cache {_gib(plan.kv_cache_bytes_per_device)} = "
            f"{_gib(plan.total_bytes_per_device)}"
            + (f"; whole on every device: {', '.join(replicated)}"
               if plan.tensor_parallel > 1 else ""))


def _setting(plan: MemoryPlan) -> str:
    weights = f"int8 weights, {plan.dtype} activations" if plan.quantize else plan.dtype
    return f"tensor parallel {plan.tensor_parallel}, {weights}"


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]
