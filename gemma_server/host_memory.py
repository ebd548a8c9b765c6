"""Host memory: giving freed memory back to the operating system, and an arena in huge pages
for the weights.

glibc keeps freed blocks in its arenas for reuse, so a process that briefly needed a lot of
memory (a tensor being converted while loading, an XLA compilation) keeps its peak resident
size. `malloc_trim` returns what is free: measured, loading a 1 GB bfloat16 checkpoint peaks at
~1.05x the weights with it and ~1.4x without (scripts/measure_load_memory.py); after warm-up
the compilers' working memory (~0.4 GB on bench-150m) goes back.

A decode step streams every weight once, and in 4 KB pages the stream takes a TLB miss every
4 KB, where the CPU's prefetches stop. In 2 MB transparent huge pages the same products ran
faster (paired harness on the development VM, huge vs 4 KB pages: one-row bf16 products 0.86x
the time, int8 0.89x, 16-row bf16 0.89x). XLA allocates each weight on its own, mostly not on
2 MB boundaries, so the loader copies them into one `HugePageArena` instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path
from typing import Any

import numpy as np


def _load_libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name and hasattr(ctypes.CDLL(name), "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc()


def release_freed_memory() -> None:
    """Return freed heap memory to the OS (a no-op where libc has no malloc_trim)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


HUGE_PAGE = 2 << 20
ALIGNMENT = 64  # XLA:CPU uses an aligned host array in place (no copy) from 64 bytes
_MADV_HUGEPAGE = 14


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


class HugePageArena:
    """One block of host memory for arrays copied in one after another: 2 MB aligned and
    advised into transparent huge pages (`MADV_HUGEPAGE`) before anything touches it, so that
    its pages are huge from the first write wherever the kernel offers them on request (THP
    `madvise` or `always`); elsewhere it is ordinary memory."""

    def __init__(self, nbytes: int):
        self.size = _round_up(max(nbytes, 1), HUGE_PAGE)
        self._block = np.empty(self.size + HUGE_PAGE, np.uint8)  # malloc'd, untouched yet
        start = self._block.ctypes.data
        self._base = _round_up(start, HUGE_PAGE) - start  # offsets below count from here
        self._used = 0
        _advise_huge_pages(start + self._base, self.size)

    @property
    def address(self) -> int:
        """Where the arena starts in memory (a multiple of 2 MB); `size` bytes follow."""
        return int(self._block.ctypes.data) + self._base

    def place(self, array: np.ndarray) -> np.ndarray:
        """A copy of `array` in the arena (a view of it, which keeps the arena alive)."""
        at = _round_up(self._used, ALIGNMENT)
        if at + array.nbytes > self.size:
            raise ValueError("the arena is full")
        begin = self._base + at
        view = self._block[begin:begin + array.nbytes].view(array.dtype).reshape(array.shape)
        view[...] = array
        self._used = at + array.nbytes
        return view

    @staticmethod
    def size_for(arrays: list[Any]) -> int:
        """Bytes an arena needs to `place` these arrays (anything with `nbytes`)."""
        return sum(_round_up(a.nbytes, ALIGNMENT) for a in arrays)


_THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def transparent_huge_pages() -> bool:
    """Whether this kernel hands out transparent huge pages on request (mode `always` or
    `madvise`, the bracketed word of the sysfs file); False for `never`, other systems."""
    try:
        mode = _THP_MODE.read_text()
    except OSError:
        return False
    return "[always]" in mode or "[madvise]" in mode


def _advise_huge_pages(address: int, length: int) -> None:
    """A request, not a guarantee: a refusal leaves ordinary pages, which work the same."""
    if _LIBC is not None and hasattr(_LIBC, "madvise"):
        madvise = _LIBC.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        madvise(address, length, _MADV_HUGEPAGE)
