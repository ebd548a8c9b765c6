"""XLA compilations of this process: counted, and kept across restarts.

The count is process-wide by nature (JAX reports every compilation of the process through
`jax.monitoring`, whose listeners are process-global), so it lives in one class here, fed by
two listeners registered once on import; executors read it before and after their warm-up.
"""

from __future__ import annotations

import jax


class CompileCount:
    """XLA compilations in this process, counted through `jax.monitoring`.

    JAX reports every backend compile request, including those the persistent compilation
    cache answers (they then also report a cache hit): compilations = requests - hits.
    """

    requests = 0
    cache_hits = 0

    @classmethod
    def compiled(cls) -> int:
        return cls.requests - cls.cache_hits


def _on_duration(event: str, duration_secs: float, **_: str | int) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        CompileCount.requests += 1


def _on_event(event: str, **_: str | int) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        CompileCount.cache_hits += 1


jax.monitoring.register_event_duration_secs_listener(_on_duration)
jax.monitoring.register_event_listener(_on_event)


def use_compilation_cache(directory: str) -> None:
    """Keep every compiled executable in `directory`, so a restart loads instead of compiling.

    JAX by default writes only executables that took over a second to compile; a server's
    small steps (sampling, insert, short buckets) would then be compiled again at every start.
    """
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
