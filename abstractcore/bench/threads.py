"""Worker threads for MLX work that are fully gone before the interpreter exits.

MLX keeps per-thread state whose C++ destructor runs after ``Thread.join()`` returns; if the
interpreter is finalizing by then the process aborts ("terminate called without an active
exception"). asyncio's default executor joins its threads at exit but does not wait for
that, so MLX work here runs on pools that we shut down ourselves, waiting for each OS thread
to disappear.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["MLXThreads"]

T = TypeVar("T")


class MLXThreads:
    """A thread pool (``asyncio.to_thread`` semantics) with a shutdown that waits for OS exit."""

    def __init__(self, name: str, max_workers: int | None = None) -> None:
        # asyncio's default executor size, so a pool of these behaves like asyncio.to_thread.
        workers = max_workers or min(32, (os.cpu_count() or 1) + 4)
        self._native_ids: list[int] = []
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=self._record)

    def _record(self) -> None:
        self._native_ids.append(threading.get_native_id())

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on a pool thread and await its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    async def shutdown(self) -> None:
        """Wait for running calls, stop the threads, and wait until the OS has reaped them."""
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True)
        deadline = time.monotonic() + 2.0
        for tid in self._native_ids:
            # Linux exposes live threads under /proc/self/task; elsewhere join() must do.
            while os.path.exists(f"/proc/self/task/{tid}") and time.monotonic() < deadline:
                time.sleep(0.001)
