"""Give the memory MLX frees back to the kernel: ``malloc_trim`` between engine steps.

MLX's CPU backend takes its buffers from ``malloc``. glibc serves a large allocation with
its own ``mmap`` and returns it on free, but after such a block is freed it raises its mmap
threshold to that size (up to 32 MiB on 64-bit), so later buffers of that size come from the
heap arenas, and a freed block there stays in the process unless it is at the top of a heap.
A server whose requests come and go (KV caches growing in blocks, prefill activations of
every size) then grows while MLX's own accounting stays flat. Measured on this project's
2-core machine (docs/concurrency.md, "Memory: what the engine holds and bounds"), 24 clients
of mixed requests against the in-process engine: the resident set reached 5.0-5.7 GB with
MLX holding 3.5 GB (active + buffer cache); with ``malloc_trim(0)`` once a second it stayed
within 0.1-0.2 GB of what MLX holds. A fixed 1 MiB threshold (``mallopt``) bounded it as
well but cost ~10% of throughput at 32 rows (every buffer MLX's cache could not serve paid
for fresh pages); the trim cost nothing measurable (124 vs 126 tok/s, four runs each).

:class:`Trimmer` runs on the engine thread, between steps: at most once per
``ABSTRACTCORE_MALLOC_TRIM_S`` seconds (default 1; ``0`` turns it off) while busy, and once
when the engine goes idle. glibc only (elsewhere it does nothing); the trim is process-wide.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
import time
from typing import Any

__all__ = ["TRIM_ENV", "Trimmer"]

log = logging.getLogger(__name__)

#: Seconds between two trims while the engine is busy (``0``: never trim).
TRIM_ENV = "ABSTRACTCORE_MALLOC_TRIM_S"


def _libc() -> Any:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except AttributeError:
        return None


class Trimmer:
    """``malloc_trim(0)`` at most every ``interval_s`` (engine thread only)."""

    def __init__(self, interval_s: float | None = None) -> None:
        if interval_s is None:
            try:
                interval_s = float(os.environ.get(TRIM_ENV, "1"))
            except ValueError:
                log.warning("%s is not a number of seconds; trimming every 1 s", TRIM_ENV)
                interval_s = 1.0
        self.interval_s = interval_s
        self._trim = _libc() if interval_s > 0 else None
        self._last = time.perf_counter()
        self._dirty = False  # steps ran since the last trim
        #: Trims done so far, and the seconds they took (stats).
        self.trims = 0
        self.seconds = 0.0

    @property
    def enabled(self) -> bool:
        return self._trim is not None

    def after_step(self, now: float) -> None:
        """A step ran: trim if the interval has passed."""
        self._dirty = True
        if self._trim is not None and now - self._last >= self.interval_s:
            self._run(now)

    def idle(self) -> None:
        """The engine is about to wait for work: trim what the last steps freed."""
        if self._trim is not None and self._dirty:
            self._run(time.perf_counter())

    def _run(self, now: float) -> None:
        assert self._trim is not None
        start = time.perf_counter()
        self._trim(0)
        self.seconds += time.perf_counter() - start
        self._last, self._dirty = now, False
        self.trims += 1
