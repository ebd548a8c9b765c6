"""What the engine's next decode call runs: each slot's step budget, and whether a call can be
launched on the tokens of the one still in flight (run-ahead).

Pure bookkeeping over the scheduler's rows, kept apart from the engine's loop so that the
rules (a slot runs at most `decode_steps` steps a call and never past its token limit; a call
is launched ahead only on the same slots and compiled row count) read in one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np

from gemma_server.engine.device_results import DecodeLaunch
from gemma_server.engine.scheduler import Admitted, Choice

Row = tuple[int, Admitted, Choice]  # (slot, request, choice)


@dataclasses.dataclass
class InFlight:
    """A launched decode call: its rows, the positions its first step ran at and the steps
    each slot runs."""

    live: list[Row]
    positions: np.ndarray
    budgets: np.ndarray
    launch: DecodeLaunch


def budgets(slots: int, rows: Iterable[Row], generated: dict[int, int], most: int
            ) -> np.ndarray:
    """Steps each slot runs in a call: up to `most`, within its request's token limit
    (`generated[slot]`: its tokens counted by the time the call starts)."""
    out = np.zeros(slots, np.int32)
    for slot, admitted, _ in rows:
        out[slot] = max(0, min(most, admitted.request.max_new_tokens - generated[slot]))
    return out


def next_call(step: InFlight, decoding: list[int], slots: int, most: int,
              decode_rows: Callable[[np.ndarray], int]
              ) -> tuple[np.ndarray, np.ndarray] | None:
    """Positions and budgets of the call after `step`, when it can be launched on that call's
    last tokens: the same slots decode (`decoding`; those the call ends by length sit out, as
    do those it runs fewer steps than the others), with the same compiled row count
    (`decode_rows`). None otherwise."""
    if [s for s, _, _ in step.live] != decoding:
        return None
    count = step.launch.count
    positions = np.full(slots, -1, np.int32)
    going = [(slot, a, c) for slot, a, c in step.live if step.budgets[slot] == count]
    for slot, _, _ in going:
        positions[slot] = step.positions[slot] + count
    steps = budgets(slots, going, {slot: c.generated + count for slot, _, c in going}, most)
    positions[steps == 0] = -1
    if positions.max() < 0 or decode_rows(positions) != decode_rows(step.positions):
        return None
    return positions, steps
