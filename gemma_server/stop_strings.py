"""Stop strings over streamed text: never leak a stop string, even one spanning tokens.

Text that could still become the start of a stop string is held back (at most the longest stop
string minus one character); on a match the text is cut before the stop string and the choice
ends. What is released over the whole stream equals the non-streamed text.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStringMatcher:
    def __init__(self, stops: Sequence[str]):
        self._stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Text safe to release now; sets `stopped` when a stop string appeared."""
        if self.stopped:
            return ""
        self._pending += text
        cut = min((i for i in (self._pending.find(s) for s in self._stops) if i >= 0),
                  default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._pending = self._pending[:cut], ""
            return out
        split = max(len(self._pending) - self._hold, 0)
        out, self._pending = self._pending[:split], self._pending[split:]
        return out

    def flush(self) -> str:
        """At the end of the choice: release what was held back (it matched nothing)."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out
