"""Settings passed inward as frozen objects, built once at the edge (CLI, env, file)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Shapes and limits of the generation engine; all fixed at start-up.

    max_total_tokens: prompt + generated tokens per sequence (the KV cache length per slot).
    max_batch_prefill_tokens: token budget of one prefill call; longer prompts are chunked.
    prefill_buckets: prompt-chunk lengths that are compiled; a chunk is padded to the next one.
    prefill_batch_sizes: how many prompts one prefill call may carry (each a compiled shape).
    decode_steps: decode steps one device call may run while nothing waits for a slot or a
        prefill (tokens then reach clients in bursts of up to this many; 1: one per call).
    """

    max_batch_size: int = 8
    max_total_tokens: int = 2048
    max_input_length: int = 1512
    # 1024: a 1500-token prompt prefills as fast in chunks of 1024 + 512 as in one of 1536
    # (bench-150m 809 vs 760 tok/s, Gemma-2B shape 103 vs 102), with a third less activation
    # memory, fewer compiled shapes, and running streams waiting one shorter chunk.
    max_batch_prefill_tokens: int = 1024
    max_waiting: int = 128
    prefill_buckets: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 1536, 2048)
    prefill_batch_sizes: tuple[int, ...] = (1, 4)
    compilation_cache_dir: str | None = None
    max_loras: int = 0  # LoRA adapters servable at once; 0 compiles no LoRA code at all
    max_lora_rank: int = 32
    # 4: the host's work per call (dispatch, read-back, hand-out) is paid once per 4 tokens,
    # while a request arriving meanwhile waits at most 3 more steps for its slot.
    decode_steps: int = 4

    def __post_init__(self) -> None:
        if self.max_input_length >= self.max_total_tokens:
            raise ValueError(
                f"max_input_length ({self.max_input_length}) must be < max_total_tokens "
                f"({self.max_total_tokens})"
            )
        if self.max_batch_size < 1 or self.max_waiting < 0:
            raise ValueError("max_batch_size must be >= 1 and max_waiting >= 0")
        if self.decode_steps < 1:
            raise ValueError("decode_steps must be >= 1")
        if self.max_loras < 0 or self.max_lora_rank < 1:
            raise ValueError("max_loras must be >= 0 and max_lora_rank >= 1")
        if self.max_batch_prefill_tokens < min(self.prefill_buckets):
            raise ValueError(
                f"max_batch_prefill_tokens ({self.max_batch_prefill_tokens}) must be at least "
                f"the smallest prefill bucket ({min(self.prefill_buckets)})"
            )

    @property
    def chunk_buckets(self) -> tuple[int, ...]:
        """Buckets a chunk can use: those within the prefill budget (at least the smallest)."""
        fit = tuple(b for b in sorted(self.prefill_buckets) if b <= self.max_batch_prefill_tokens)
        return fit or (min(self.prefill_buckets),)

    @property
    def attention_buckets(self) -> tuple[int, ...]:
        """Cache lengths a decode step can attend over: 256, x4 ..., then the maximum (where
        attention reads the whole prefix it is given: see Executor.attention_buckets)."""
        return _geometric(256, 4, self.max_total_tokens)

    def slot_buckets(self, min_rows: int = 1) -> tuple[int, ...]:
        """Leading slot counts a decode step can run on: min_rows, x4 ..., then all slots."""
        return _geometric(min(min_rows, self.max_batch_size), 4, self.max_batch_size)

    def prefill_shapes(self) -> list[tuple[int, int]]:
        """Every (rows, bucket) prefill shape the engine compiles and uses."""
        shapes = []
        for rows in sorted(set(self.prefill_batch_sizes)):
            if rows > self.max_batch_size:
                continue
            for bucket in self.chunk_buckets:
                if rows == 1 or rows * bucket <= self.max_batch_prefill_tokens:
                    shapes.append((rows, bucket))
        return shapes


def _geometric(start: int, factor: int, last: int) -> tuple[int, ...]:
    values, n = [], start
    while n < last:
        values.append(n)
        n *= factor
    return (*values, last)
