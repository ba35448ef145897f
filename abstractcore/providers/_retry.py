"""One retry loop for the HTTP shells: ``run``/``arun`` for whole responses, ``stream``/
``astream`` for streams, all four on one :class:`Attempts` object.

The decision (retry or give up, and how long to wait) is made in one place,
:meth:`Attempts.wait_or_raise`; the four loops only differ in how they call and wait. A
stream is retried only until its first chunk was yielded: after that the caller has text, so
a failure is raised as it is. Every attempt's iterator is closed when it ends (a consumer that
stops early releases the connection at once).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from contextlib import aclosing, closing
from dataclasses import dataclass, field
from typing import TypeVar

from ..errors import ProviderError
from . import _http
from ._http import RetryPolicy

__all__ = ["Attempts"]

logger = logging.getLogger("abstractcore.providers.http")

T = TypeVar("T")


@dataclass
class Attempts:
    """Retry bookkeeping for one call (how many so far, since when) and the loops that use it."""

    policy: RetryPolicy
    provider: str
    count: int = 0
    start: float = field(default_factory=time.monotonic)

    def wait_or_raise(self, exc: ProviderError) -> float:
        """Seconds to wait before the next attempt; re-raises ``exc`` when it is final."""
        wait = self.policy.delay(exc, self.count, time.monotonic() - self.start)
        if wait is None:
            raise exc
        self.count += 1
        logger.info(
            "%s: retry %d/%d in %.2fs after %s",
            self.provider,
            self.count,
            self.policy.max_retries,
            wait,
            type(exc).__name__,
        )
        return wait

    def run(self, attempt: Callable[[], T]) -> T:
        """``attempt()`` until it succeeds or its error is final."""
        while True:
            try:
                return attempt()
            except ProviderError as exc:
                _http.sleep(self.wait_or_raise(exc))

    async def arun(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Async twin of :meth:`run`."""
        while True:
            try:
                return await attempt()
            except ProviderError as exc:
                await _http.asleep(self.wait_or_raise(exc))

    def stream(self, attempt: Callable[[], Generator[T, None, None]]) -> Generator[T, None, None]:
        """The items of ``attempt()``, opening a new one after a failure before the first."""
        while True:
            yielded = False
            try:
                with closing(attempt()) as items:
                    for item in items:
                        yielded = True
                        yield item
                return
            except ProviderError as exc:
                if yielded:
                    raise
                _http.sleep(self.wait_or_raise(exc))

    async def astream(
        self, attempt: Callable[[], AsyncGenerator[T, None]]
    ) -> AsyncGenerator[T, None]:
        """Async twin of :meth:`stream`."""
        while True:
            yielded = False
            try:
                async with aclosing(attempt()) as items:
                    async for item in items:
                        yielded = True
                        yield item
                return
            except ProviderError as exc:
                if yielded:
                    raise
                await _http.asleep(self.wait_or_raise(exc))
