"""Running one generation for one HTTP request: cancellation on disconnect, keep-alive, metrics.

Both APIs go through here, so disconnect handling and accounting are written once. Every
failure leaves as an :class:`APIError` already counted in the metrics (``recorded``).

Model output that the library's own checks reject (:class:`~abstractcore.errors.
StructuredOutputError`, :class:`~abstractcore.errors.ToolCallError`) is not an error here:
the OpenAI and Anthropic APIs return what the model wrote and their clients validate it (the
openai SDK's ``parse()`` raises on invalid JSON and on ``finish_reason: "length"``), so the
server answers with the model's last response, and a stream finishes normally.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

from starlette.types import Receive

from ..errors import StructuredOutputError, ToolCallError
from ..types import GenerateResponse, StreamChunk, ToolCallDelta, Usage
from .http_errors import APIError, ClientDisconnected, Rename, from_exception
from .sse import wait_for_disconnect
from .state import ServerState

__all__ = [
    "CACHE_KEY_HEADER",
    "CLIENT_CLOSED",
    "KEEPALIVE",
    "GenerationParams",
    "Keepalive",
    "StreamRun",
    "generate",
    "open_stream",
]

logger = logging.getLogger("abstractcore.server")

#: The header a client may send its prompt-cache key in (read by a balancer, see the docs).
CACHE_KEY_HEADER = "x-prompt-cache-key"

# nginx's code for "client closed the request"; only ever seen in metrics.
CLIENT_CLOSED: Final = 499


class Keepalive:
    """Marker returned by :meth:`StreamRun.next` when nothing arrived within the interval."""

    def __repr__(self) -> str:
        return "KEEPALIVE"


KEEPALIVE: Final = Keepalive()


@dataclass
class GenerationParams:
    """A validated request: provider kwargs, how to answer, and ``rename``, which turns a
    provider-side field name (``max_output_tokens``) into the client's (``max_tokens``)."""

    kwargs: dict[str, Any]
    stream: bool
    include_usage: bool
    rename: Rename


def _recorded(exc: BaseException, rename: Rename) -> APIError:
    err = from_exception(exc, rename=rename)
    err.recorded = True
    return err


def _output_error_response(exc: BaseException) -> GenerateResponse | None:
    """The model's answer behind an output-validation error (None for any other error)."""
    if isinstance(exc, (StructuredOutputError, ToolCallError)) and exc.response is not None:
        logger.info("returning the model's output as it is, though it did not validate: %s", exc)
        return exc.response
    return None


async def generate(
    state: ServerState,
    endpoint: str,
    kwargs: dict[str, Any],
    *,
    receive: Receive,
    started: float,
    rename: Rename,
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
            response = _output_error_response(exc)
            if response is None:
                err = _recorded(exc, rename)
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
    rename: Rename,
) -> StreamRun:
    """Start ``provider.astream(**kwargs)``; argument errors raise here, before any byte is sent."""
    provider = state.require_provider()
    try:
        chunks = provider.astream(**kwargs)
    except Exception as exc:
        err = _recorded(exc, rename)
        state.metrics.record(endpoint, err.status, latency_s=time.perf_counter() - started)
        raise err from exc
    return StreamRun(state, endpoint, chunks, started, rename)


class StreamRun:
    """A provider stream behind one streaming response.

    :meth:`next` waits at most ``timeout`` for the next chunk and returns :data:`KEEPALIVE`
    when none came, without cancelling the pending read. :meth:`close` cancels whatever is
    still running and accounts the request once, with :attr:`status` (499 if never set).

    When the provider's final check rejects the model's output, the chunk that carried the
    end is lost with the exception; :meth:`next` gives in its place a final chunk built from
    the error's response: the text, argument fragments and logprobs not yet passed on, the
    finish reason and the usage.
    """

    def __init__(
        self,
        state: ServerState,
        endpoint: str,
        chunks: AsyncIterator[StreamChunk],
        started: float,
        rename: Rename,
    ) -> None:
        self._state = state
        self._endpoint = endpoint
        self._chunks = chunks
        self._rename = rename
        self._pending: asyncio.Future[StreamChunk | None] | None = None
        self._started = started
        self._closed = False
        self.status: int | None = None
        self.ttft_s: float | None = None
        self.usage: Usage | None = None
        # What was passed on so far, to complete it from an output error's response.
        self._text: list[str] = []
        self._arguments: dict[int, list[str]] = {}
        self._logprobs = 0
        state.in_flight += 1

    async def next(self, timeout: float) -> StreamChunk | Keepalive | None:
        """The next chunk, KEEPALIVE after ``timeout`` seconds of silence, or None at the end."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(_anext(self._chunks))
        done, _ = await asyncio.wait({self._pending}, timeout=timeout)
        if not done:
            return KEEPALIVE
        pending, self._pending = self._pending, None
        try:
            chunk = pending.result()
        except Exception as exc:
            response = _output_error_response(exc)
            if response is None:
                raise
            chunk = self._rest_of(response)
        if chunk is None:
            return None
        if chunk.content and self.ttft_s is None:
            self.ttft_s = time.perf_counter() - self._started
        if chunk.usage is not None:
            self.usage = chunk.usage
        self._text.append(chunk.content)
        for d in chunk.tool_call_deltas:
            self._arguments.setdefault(d.index, []).append(d.arguments)
        self._logprobs += len(chunk.logprobs or ())
        return chunk

    def _rest_of(self, response: GenerateResponse) -> StreamChunk:
        """The final chunk: what ``response`` has beyond what was passed on."""
        sent = "".join(self._text)
        text = response.content
        deltas: list[ToolCallDelta] = []
        indexes = sorted(self._arguments)  # the assembled calls come in index order
        for k, call in enumerate(response.tool_calls):
            raw = call.raw_arguments
            if k < len(indexes):
                given = "".join(self._arguments[indexes[k]])
                if raw.startswith(given) and raw != given:
                    deltas.append(ToolCallDelta(index=indexes[k], arguments=raw[len(given) :]))
            else:
                index = (indexes[-1] + 1 if indexes else 0) + k - len(indexes)
                deltas.append(ToolCallDelta(index=index, id=call.id, name=call.name, arguments=raw))
        return StreamChunk(
            content=text[len(sent) :] if text.startswith(sent) else "",
            finish_reason=response.finish_reason,
            usage=response.usage,
            tool_call_deltas=deltas,
            tool_calls=list(response.tool_calls),
            logprobs=(response.logprobs or [])[self._logprobs :] or None,
        )

    async def first(self, timeout: float) -> StreamChunk | Keepalive | None:
        """Like :meth:`next`, but a failure closes the run and raises an APIError.

        Used before the response status is committed, so that errors raised at admission
        (a full queue, a prompt too long) get their own HTTP status.
        """
        try:
            return await self.next(timeout)
        except BaseException as exc:
            err = _recorded(exc, self._rename) if isinstance(exc, Exception) else None
            self.status = err.status if err is not None else None
            await self.close()
            if err is None:
                raise
            raise err from exc

    def fail(self, exc: BaseException) -> APIError:
        """Record that the stream ended with ``exc`` after the status was sent."""
        err = _recorded(exc, self._rename)
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
