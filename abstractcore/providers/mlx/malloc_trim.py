"""Bound the memory glibc keeps for MLX without paying for fresh pages on every batch change.

MLX's CPU backend takes its buffers from ``malloc``. Two costs pull in opposite directions:

- **Growth.** glibc serves a large allocation with its own ``mmap`` and returns it on free,
  but after such a block is freed it raises its mmap threshold to that size (up to 32 MiB),
  so later buffers of that size come from the heap arenas, and a freed block there stays in
  the process unless it is at the top of a heap. A server whose requests come and go (KV
  caches growing in blocks, prefill activations of every size) then grows while MLX's own
  accounting stays flat: 24 clients of mixed requests against the in-process engine reached
  5.0-5.7 GB resident with MLX holding 3.5 GB (docs/concurrency.md, "Memory: what the
  engine holds and bounds").
- **Fresh pages.** Memory given back to the kernel (``malloc_trim``, ``munmap``, glibc's own
  trimming of a heap's top) costs a page fault per 4 KiB page the next time it is used:
  ~2.5 us each on the project's VMs. mlx-lm copies every running row's KV cache when a
  request joins the batch (``BatchKVCache.extend``) or leaves it (``filter``), 377 MB at 32
  rows of 256-token blocks of SmolLM2; from fresh pages that copy took 0.2-0.5 s and stalled
  every stream, from reused ones ~35 ms (scripts/kv_filter_faults.py).

So, on glibc, :func:`keep_freed_memory` fixes the mmap threshold at its 32 MiB maximum and
the heap-top trim threshold at the budget below (no fresh pages for the blocks a batch keeps
recycling), and :class:`Trimmer` runs ``malloc_trim(0)`` between engine steps, at most once
per ``ABSTRACTCORE_MALLOC_TRIM_S`` seconds (default 1; ``0`` turns both off) and when the
engine goes idle, but only when the free memory glibc holds (``mallinfo2``'s ``fordblks``)
exceeds ``ABSTRACTCORE_MALLOC_KEEP_MB`` (default 2048; ``0``: trim whenever the interval has
passed, the engine's earlier behaviour). The resident set stays within about that budget
of what MLX holds (the trim every second kept it closer, and paid in page faults). glibc
only (elsewhere it does nothing); the settings and the trim are process-wide. The policy is
written here rather than left to glibc's tunables because those are read once at process
start (``GLIBC_TUNABLES``), before the engine exists.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
import sys
import time
from typing import Any

__all__ = ["KEEP_ENV", "TRIM_ENV", "Trimmer", "heap_free_bytes", "keep_freed_memory"]

log = logging.getLogger(__name__)

#: Seconds between two trims while the engine is busy (``0``: never trim).
TRIM_ENV = "ABSTRACTCORE_MALLOC_TRIM_S"
#: MiB of freed memory glibc may keep for reuse before a trim gives it back (``0``: none).
KEEP_ENV = "ABSTRACTCORE_MALLOC_KEEP_MB"

_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
#: glibc's largest mmap threshold on 64-bit (HEAP_MAX_SIZE / 2); blocks above it are
#: mmap'd and unmapped on free whatever the setting.
_MMAP_THRESHOLD_MAX = 32 << 20


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


@functools.cache  # one handle, its signatures set once, for every caller
def _libc() -> Any:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(None)
    for name in ("malloc_trim", "mallopt", "mallinfo2"):  # mallinfo2: glibc >= 2.33
        if not hasattr(libc, name):
            return None
    libc.mallinfo2.restype = _Mallinfo2
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        log.warning("%s=%r is not a non-negative number; using %s", name, raw, default)
        return default
    return value


def heap_free_bytes() -> int | None:
    """Free bytes glibc holds in its arenas (``mallinfo2().fordblks``); None off glibc."""
    libc = _libc()
    return None if libc is None else int(libc.mallinfo2().fordblks)


def keep_freed_memory(keep_bytes: int) -> bool:
    """Fix glibc's mmap threshold at its maximum and its heap-top trim threshold at
    ``keep_bytes`` (process-wide); False where that is not glibc or it refused."""
    libc = _libc()
    if libc is None:
        return False
    trim_at = max(1, min(keep_bytes, 2**31 - 1))  # mallopt takes an int
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, trim_at)
    )


class Trimmer:
    """``malloc_trim(0)`` at most every ``interval_s``, when glibc holds more than
    ``keep_bytes`` free (engine thread only)."""

    def __init__(self, interval_s: float | None = None, keep_bytes: int | None = None) -> None:
        if interval_s is None:
            interval_s = _env_number(TRIM_ENV, 1.0)
        if keep_bytes is None:
            keep_bytes = int(_env_number(KEEP_ENV, 2048) * (1 << 20))
        self.interval_s = interval_s
        self.keep_bytes = keep_bytes
        self._libc = _libc() if interval_s > 0 else None
        self._last = time.perf_counter()
        self._dirty = False  # steps ran since the last check
        #: Trims done so far, the seconds they (and the checks) took, and the free bytes
        #: glibc held at the last check (stats).
        self.trims = 0
        self.seconds = 0.0
        self.free_bytes: int | None = None

    @property
    def enabled(self) -> bool:
        return self._libc is not None

    def start(self) -> bool:
        """On the engine thread before its first step: keep freed blocks for reuse
        (:func:`keep_freed_memory`) when trimming is on and a budget is set."""
        if self._libc is None or self.keep_bytes == 0:
            return False
        return keep_freed_memory(self.keep_bytes)

    def after_step(self, now: float) -> None:
        """A step ran: check (and trim) if the interval has passed."""
        self._dirty = True
        if self._libc is not None and now - self._last >= self.interval_s:
            self._check(now)

    def idle(self) -> None:
        """The engine is about to wait for work: check what the last steps freed."""
        if self._libc is not None and self._dirty:
            self._check(time.perf_counter())

    def _free(self) -> int:
        free = heap_free_bytes()
        assert free is not None  # enabled: glibc
        return free

    def _trim(self, pad: int) -> None:
        assert self._libc is not None
        self._libc.malloc_trim(pad)

    def _check(self, now: float) -> None:
        start = time.perf_counter()
        self.free_bytes = self._free()
        if self.free_bytes > self.keep_bytes:
            self._trim(0)
            self.trims += 1
        self.seconds += time.perf_counter() - start
        self._last, self._dirty = now, False
