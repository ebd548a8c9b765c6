"""Adapter names <-> stack rows, within a fixed capacity. Host-side bookkeeping only."""

from __future__ import annotations

import threading

from gemma_server.errors import ConfigurationError, InvalidRequest


class AdapterRegistry:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._rows: dict[str, int] = {}
        self._paths: dict[str, str] = {}
        self._free = list(range(1, capacity + 1))
        self._lock = threading.Lock()

    def reserve(self, name: str, path: str) -> int:
        """A free row for a new adapter name."""
        with self._lock:
            if name in self._rows:
                raise InvalidRequest(f"an adapter named {name!r} is already loaded")
            if not self._free:
                raise ConfigurationError(
                    f"cannot load adapter {name!r}: all {self.capacity} LoRA slots are in use "
                    "(raise --max-loras)")
            row = self._free.pop(0)
            self._rows[name], self._paths[name] = row, path
            return row

    def release(self, name: str) -> int:
        with self._lock:
            row = self._rows.pop(name)
            self._paths.pop(name, None)
            self._free.append(row)
            self._free.sort()
            return row

    def row(self, name: str) -> int | None:
        return self._rows.get(name)

    def name_of(self, row: int) -> str | None:
        return next((name for name, r in self._rows.items() if r == row), None)

    def names(self) -> list[str]:
        return list(self._rows)

    def path(self, name: str) -> str | None:
        return self._paths.get(name)
