"""Step results on the host: decode calls launched and not yet read, and the reads themselves.

JAX dispatches a compiled step and returns at once; the engine reads a decode call's tokens
one loop iteration later (engine.py), so that host work overlaps the device's. A step that
fails while it runs surfaces at that read, which is why the read tells the executor
(`on_failure`): the donated cache and state the step consumed are gone.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from gemma_server.engine.sampling import Sampled


class DecodeLaunch:
    """A decode call that was launched (JAX dispatches asynchronously) and not yet read."""

    def __init__(self, drawn: Sampled, count: int, on_failure: Callable[[], None]):
        self._drawn, self.count, self._on_failure = drawn, count, on_failure

    def result(self) -> dict[str, np.ndarray]:
        """The call's draws on the host, each [count, rows, ...] (step-major); waits for the
        call to finish."""
        try:
            host = to_host(self._drawn)
        except Exception:
            self._on_failure()
            raise
        return {name: value[:self.count] for name, value in host.items()}


def local(x: jax.Array) -> np.ndarray:
    """A replicated result on the host, from a copy this process holds (on a multi-host mesh
    the whole array spans other processes' devices too)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(x.addressable_data(0))


def to_host(drawn: Sampled) -> dict[str, np.ndarray]:
    """A step's draws (tokens, logprobs, top ids and logprobs) as numpy arrays."""
    parts = (drawn.tokens, drawn.logprob, drawn.top_ids, drawn.top_logprobs)
    if all(p.is_fully_addressable for p in parts):
        host = jax.device_get(parts)  # one transfer for all four, not four round trips
    else:
        host = tuple(local(p) for p in parts)
    return dict(zip(("tokens", "logprob", "top_ids", "top_logprobs"),
                    (np.asarray(h) for h in host), strict=True))
