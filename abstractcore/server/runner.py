"""Running one generation for one HTTP request: cancellation on disconnect, keep-alive, metrics.

Both APIs go through here, so disconnect handling and accounting are written once. Every
failure leaves as an :class:`APIError` already counted in the metrics (``recorded``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

from starlette.types import Receive

from ..types import GenerateResponse, StreamChunk, Usage
from .errors import APIError, ClientDisconnected, from_exception
from .sse import wait_for_disconnect
from .state import ServerState

__all__ = ["CLIENT_CLOSED", "KEEPALIVE", "Keepalive", "StreamRun", "generate", "open_stream"]

# nginx's code for "client closed the request"; only ever seen in metrics.
CLIENT_CLOSED: Final = 499


class Keepalive:
    """Marker returned by :meth:`StreamRun.next` when nothing arrived within the interval."""

    def __repr__(self) -> str:
        return "KEEPALIVE"


KEEPALIVE: Final = Keepalive()


def _recorded(exc: BaseException, field_names: Mapping[str, str]) -> APIError:
    err = from_exception(exc, field_names=field_names)
    err.recorded = True
    return err


async def generate(
    state: ServerState,
    endpoint: str,
    kwargs: dict[str, Any],
    *,
    receive: Receive,
    started: float,
    field_names: Mapping[str, str],
) -> GenerateResponse:
    """``provider.agenerate(**kwargs)``, cancelled as soon as the client disconnects."""
    provider = state.require_provider()
    state.in_flight += 1
    status = CLIENT_CLOSED
    response: GenerateResponse | None = None
    called = time.perf_counter()
    try:
        task = asyncio.ensure_future(provider.agenerate(**kwargs))
        watcher = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not task.done():
                task.cancel()  # the provider removes the request from its engine
            await asyncio.gather(task, watcher, return_exceptions=True)
        if task.cancelled():
            raise ClientDisconnected()
        try:
            response = task.result()
        except Exception as exc:
            err = _recorded(exc, field_names)
            status = err.status
            raise err from exc
        status = 200
        return response
    finally:
        state.in_flight -= 1
        ttft = None
        if response is not None and response.timing.ttft_s is not None:
            ttft = (called - started) + response.timing.ttft_s
        state.metrics.record(
            endpoint,
            status,
            latency_s=time.perf_counter() - started,
            ttft_s=ttft,
            usage=None if response is None else response.usage,
        )


def open_stream(
    state: ServerState,
    endpoint: str,
    kwargs: dict[str, Any],
    *,
    started: float,
    field_names: Mapping[str, str],
) -> StreamRun:
    """Start ``provider.astream(**kwargs)``; argument errors raise here, before any byte is sent."""
    provider = state.require_provider()
    try:
        chunks = provider.astream(**kwargs)
    except Exception as exc:
        err = _recorded(exc, field_names)
        state.metrics.record(endpoint, err.status, latency_s=time.perf_counter() - started)
        raise err from exc
    return StreamRun(state, endpoint, chunks, started, field_names)


class StreamRun:
    """A provider stream behind one streaming response.

    :meth:`next` waits at most ``timeout`` for the next chunk and returns :data:`KEEPALIVE`
    when none came, without cancelling the pending read. :meth:`close` cancels whatever is
    still running and accounts the request once, with :attr:`status` (499 if never set).
    """

    def __init__(
        self,
        state: ServerState,
        endpoint: str,
        chunks: AsyncIterator[StreamChunk],
        started: float,
        field_names: Mapping[str, str],
    ) -> None:
        self._state = state
        self._endpoint = endpoint
        self._chunks = chunks
        self._field_names = field_names
        self._pending: asyncio.Future[StreamChunk | None] | None = None
        self._started = started
        self._closed = False
        self.status: int | None = None
        self.ttft_s: float | None = None
        self.usage: Usage | None = None
        state.in_flight += 1

    async def next(self, timeout: float) -> StreamChunk | Keepalive | None:
        """The next chunk, KEEPALIVE after ``timeout`` seconds of silence, or None at the end."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(_anext(self._chunks))
        done, _ = await asyncio.wait({self._pending}, timeout=timeout)
        if not done:
            return KEEPALIVE
        pending, self._pending = self._pending, None
        chunk = pending.result()
        if chunk is None:
            return None
        if chunk.content and self.ttft_s is None:
            self.ttft_s = time.perf_counter() - self._started
        if chunk.usage is not None:
            self.usage = chunk.usage
        return chunk

    async def first(self, timeout: float) -> StreamChunk | Keepalive | None:
        """Like :meth:`next`, but a failure closes the run and raises an APIError.

        Used before the response status is committed, so that errors raised at admission
        (a full queue, a prompt too long) get their own HTTP status.
        """
        try:
            return await self.next(timeout)
        except BaseException as exc:
            err = _recorded(exc, self._field_names) if isinstance(exc, Exception) else None
            self.status = err.status if err is not None else None
            await self.close()
            if err is None:
                raise
            raise err from exc

    def fail(self, exc: BaseException) -> APIError:
        """Record that the stream ended with ``exc`` after the status was sent."""
        err = _recorded(exc, self._field_names)
        self.status = err.status
        return err

    async def close(self) -> None:
        """Cancel the generation if it still runs, release the slot, record metrics (once)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._pending is not None and not self._pending.done():
                self._pending.cancel()
                await asyncio.gather(self._pending, return_exceptions=True)
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self._state.in_flight -= 1
            self._state.metrics.record(
                self._endpoint,
                self.status if self.status is not None else CLIENT_CLOSED,
                latency_s=time.perf_counter() - self._started,
                ttft_s=self.ttft_s,
                usage=self.usage,
            )


async def _anext(chunks: AsyncIterator[StreamChunk]) -> StreamChunk | None:
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None
