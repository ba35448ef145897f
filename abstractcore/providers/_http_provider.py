"""HTTPProvider: the sync and async shells that drive a provider's wire format over httpx.

Each verb builds its body with the :class:`~._http.WireFormat`, sends it with retries (one
loop, :class:`~._retry.Attempts`), and parses the answer with the same wire object, so the two
shells differ only in their I/O calls.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from contextlib import aclosing, closing
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from ..errors import ConfigurationError, ProviderAPIError, ProviderError
from ..request import GenerationRequest
from ..types import GenerateResponse, StreamChunk, Timing
from ._http import (
    RetryPolicy,
    WireEvent,
    WireFormat,
    aiter_events,
    check_base_url,
    client_options,
    client_timeout,
    error_from_response,
    iter_events,
    json_object,
    malformed_guard,
    translate_errors,
)
from ._retry import Attempts
from .base import BaseProvider

__all__ = ["PROMPT_CACHE_KEY_HEADER", "HTTPProvider", "request_headers"]

#: The header that carries a request's prompt_cache_key, so that a proxy in front of several
#: servers (nginx's ``hash $http_x_prompt_cache_key``) can route a conversation to the server
#: that holds its cache without reading the body.
PROMPT_CACHE_KEY_HEADER = "X-Prompt-Cache-Key"

Headers = dict[str, str]


def request_headers(request: GenerationRequest) -> Headers:
    """Per-request HTTP headers: the prompt-cache key, when the request has one."""
    key = request.prompt_cache_key
    if not key:
        return {}
    # Header values are ASCII: any other key is sent percent-encoded (routing needs only a
    # stable value; the body's prompt_cache_key, where the wire format has one, is exact).
    return {PROMPT_CACHE_KEY_HEADER: key if key.isascii() and key.isprintable() else quote(key)}


logger = logging.getLogger("abstractcore.providers.http")


class _StreamTimer:
    """Stamps the final chunk of a stream with ttft/total/decode rate."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None

    def stamp(self, chunk: StreamChunk) -> StreamChunk:
        now = time.perf_counter()
        if (chunk.content or chunk.tool_call_deltas) and self.first is None:
            self.first = now  # the first output: text, or a tool call's first piece
        if chunk.finish_reason is None:
            return chunk
        ttft = None if self.first is None else self.first - self.start
        timing = (chunk.timing or Timing()).model_copy(
            update={"ttft_s": ttft, "total_s": now - self.start}
        )
        if timing.decode_tokens_per_s is None and chunk.usage and ttft is not None:
            decode_s = (now - self.start) - ttft
            if chunk.usage.completion_tokens > 1 and decode_s > 0:
                timing.decode_tokens_per_s = (chunk.usage.completion_tokens - 1) / decode_s
        return chunk.model_copy(update={"timing": timing})


# ---------------------------------------------------------------------- the provider shell
def _event_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # another async library (trio) or no loop
        return None


_closing_tasks: set[asyncio.Task[None]] = set()


class HTTPProvider(BaseProvider):
    """Transport shared by the JSON-over-HTTP providers; subclasses set ``_wire``."""

    provider_name: ClassVar[str] = "http"
    # Fields the wire format has no parameter for go through ``extra_body`` (the OpenAI SDK's
    # name), merged into the JSON body as given.
    extra_options: ClassVar[frozenset[str]] = frozenset({"extra_body"})
    _wire: WireFormat

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = 2,
        **defaults: Any,
    ) -> None:
        super().__init__(model, **defaults)
        self.base_url = check_base_url(base_url)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(
                f"max_retries must be an integer >= 0, got {max_retries!r}", setting="max_retries"
            )
        self.max_retries = max_retries
        self.timeout = client_timeout(timeout)
        self.retry_policy = RetryPolicy(max_retries=max_retries)
        self._client: httpx.Client | None = None
        self._aclient: httpx.AsyncClient | None = None
        self._aclient_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ clients
    def _client_options(self) -> dict[str, Any]:
        return client_options(self.base_url, self._wire.headers(), self.timeout)

    def _sync_client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(**self._client_options())
            return self._client

    def _async_client(self) -> httpx.AsyncClient:
        # Connections belong to the loop that opened them, so a new loop (a second asyncio.run)
        # gets a new client. Sockets left by a loop that already closed can only be released
        # by the garbage collector: aclose() before the loop ends, or use ``async with``.
        loop = _event_loop()
        if self._aclient is not None and self._aclient_loop is not loop:
            _close_async_client_from_sync(self._aclient, self._aclient_loop)
            self._aclient = None
        if self._aclient is None:
            self._aclient = httpx.AsyncClient(**self._client_options())
            self._aclient_loop = loop
        return self._aclient

    def _request_timeout(self, request: GenerationRequest) -> httpx.Timeout:
        if request.timeout is None:
            return self.timeout
        connect = self.timeout.connect
        return httpx.Timeout(
            request.timeout,
            connect=request.timeout if connect is None else min(connect, request.timeout),
        )

    # ------------------------------------------------------------------ sync shell
    def _generate(self, request: GenerationRequest) -> GenerateResponse:
        body = self._wire.build_body(request, stream=False)
        timeout = self._request_timeout(request)
        start = time.perf_counter()
        headers = request_headers(request)
        raw = self._attempts().run(lambda: self._post(body, timeout, headers))
        return self._finish_response(raw, start, request)

    def _post(self, body: dict[str, Any], timeout: httpx.Timeout, headers: Headers) -> bytes:
        client = self._sync_client()
        with (
            translate_errors(self.provider_name, receiving=False),
            client.stream(
                "POST", self._wire.path, json=body, timeout=timeout, headers=headers
            ) as response,
        ):
            if response.status_code >= 400:
                raise self._status_error(response, self._read(response))
            return self._read(response)

    def _read(self, response: httpx.Response) -> bytes:
        with translate_errors(self.provider_name, receiving=True):
            return response.read()

    def _stream(self, request: GenerationRequest) -> Iterator[StreamChunk]:
        body = self._wire.build_body(request, stream=True)
        timeout = self._request_timeout(request)
        timer = _StreamTimer()
        # closing(): a consumer that stops early releases the connection right away.
        with closing(
            self._attempts().stream(lambda: self._stream_once(body, timeout, request))
        ) as chunks:
            for chunk in chunks:
                yield timer.stamp(chunk)

    def _stream_once(
        self, body: dict[str, Any], timeout: httpx.Timeout, request: GenerationRequest
    ) -> Generator[StreamChunk, None, None]:
        client = self._sync_client()
        parser = self._wire.stream_parser(request)
        headers = request_headers(request)
        with (
            translate_errors(self.provider_name, receiving=False),
            client.stream(
                "POST", self._wire.path, json=body, timeout=timeout, headers=headers
            ) as response,
        ):
            if response.status_code >= 400:
                raise self._status_error(response, self._read(response))
            with closing(iter_events(response.iter_lines(), self._wire.stream_format)) as events:
                while not parser.done:
                    with translate_errors(self.provider_name, receiving=True):
                        event = next(events, None)
                    if event is None:
                        raise self._truncated()
                    with malformed_guard(self.provider_name, "stream event"):
                        chunks = parser.feed(event)
                    yield from chunks
                self._drain(events)

    def _drain(self, events: Iterator[WireEvent]) -> None:
        # Reading to the end lets the connection go back to the pool; the answer is complete.
        try:
            for _ in events:
                pass
        except httpx.HTTPError:
            logger.debug("%s: ignoring an error after the stream's end", self.provider_name)

    # ------------------------------------------------------------------ async shell
    async def _agenerate(self, request: GenerationRequest) -> GenerateResponse:
        body = self._wire.build_body(request, stream=False)
        timeout = self._request_timeout(request)
        start = time.perf_counter()
        headers = request_headers(request)
        raw = await self._attempts().arun(lambda: self._apost(body, timeout, headers))
        return self._finish_response(raw, start, request)

    async def _apost(self, body: dict[str, Any], timeout: httpx.Timeout, headers: Headers) -> bytes:
        client = self._async_client()
        with translate_errors(self.provider_name, receiving=False):
            async with client.stream(
                "POST", self._wire.path, json=body, timeout=timeout, headers=headers
            ) as response:
                if response.status_code >= 400:
                    raise self._status_error(response, await self._aread(response))
                return await self._aread(response)

    async def _aread(self, response: httpx.Response) -> bytes:
        with translate_errors(self.provider_name, receiving=True):
            return await response.aread()

    async def _astream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        body = self._wire.build_body(request, stream=True)
        timeout = self._request_timeout(request)
        timer = _StreamTimer()
        attempts = self._attempts()
        async with aclosing(
            attempts.astream(lambda: self._astream_once(body, timeout, request))
        ) as chunks:
            async for chunk in chunks:
                yield timer.stamp(chunk)

    async def _astream_once(
        self, body: dict[str, Any], timeout: httpx.Timeout, request: GenerationRequest
    ) -> AsyncGenerator[StreamChunk, None]:
        client = self._async_client()
        parser = self._wire.stream_parser(request)
        headers = request_headers(request)
        with translate_errors(self.provider_name, receiving=False):
            async with client.stream(
                "POST", self._wire.path, json=body, timeout=timeout, headers=headers
            ) as response:
                if response.status_code >= 400:
                    raise self._status_error(response, await self._aread(response))
                lines = response.aiter_lines()
                async with aclosing(aiter_events(lines, self._wire.stream_format)) as events:
                    while not parser.done:
                        with translate_errors(self.provider_name, receiving=True):
                            event = await anext(events, None)
                        if event is None:
                            raise self._truncated()
                        with malformed_guard(self.provider_name, "stream event"):
                            chunks = parser.feed(event)
                        for chunk in chunks:
                            yield chunk
                    await self._adrain(events)

    async def _adrain(self, events: AsyncIterator[WireEvent]) -> None:
        try:
            async for _ in events:
                pass
        except httpx.HTTPError:
            logger.debug("%s: ignoring an error after the stream's end", self.provider_name)

    def _attempts(self) -> Attempts:
        return Attempts(self.retry_policy, self.provider_name)

    # ------------------------------------------------------------------ shared helpers
    def _status_error(self, response: httpx.Response, raw: bytes) -> ProviderError:
        return error_from_response(self.provider_name, self._wire, response, raw)

    def _truncated(self) -> ProviderAPIError:
        return ProviderAPIError(
            f"{self.provider_name}: stream ended before its final event (connection closed early)",
            provider=self.provider_name,
        )

    def _finish_response(
        self, raw: bytes, start: float, request: GenerationRequest
    ) -> GenerateResponse:
        payload = json_object(raw, self.provider_name, "response body")
        with malformed_guard(self.provider_name, "response body"):
            result = self._wire.parse_response(payload, request)
        timing = result.timing.model_copy(update={"total_s": time.perf_counter() - start})
        return result.model_copy(update={"timing": timing})

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close both HTTP clients (an async client is closed on its own loop when possible)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
        aclient, loop = self._aclient, self._aclient_loop
        self._aclient = self._aclient_loop = None
        if aclient is not None:
            _close_async_client_from_sync(aclient, loop)

    async def aclose(self) -> None:
        """Close both HTTP clients without blocking the loop."""
        aclient, loop = self._aclient, self._aclient_loop
        self._aclient = self._aclient_loop = None
        if aclient is not None:
            if loop is _event_loop():
                await aclient.aclose()
            else:
                _close_async_client_from_sync(aclient, loop)
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()  # closing sockets does not block; no thread needed


def _close_async_client_from_sync(
    client: httpx.AsyncClient, loop: asyncio.AbstractEventLoop | None
) -> None:
    """Best effort to close an AsyncClient from sync code, on the loop that owns its sockets."""
    if loop is None or loop.is_closed():
        return  # its loop is gone; the sockets are released with the objects
    current = _event_loop()
    if loop is current:
        task = loop.create_task(client.aclose())
        _closing_tasks.add(task)
        task.add_done_callback(_closing_tasks.discard)
    elif loop.is_running():
        asyncio.run_coroutine_threadsafe(client.aclose(), loop)
    elif current is None:
        loop.run_until_complete(client.aclose())
    # else: an idle loop while another one runs here; the garbage collector releases it
