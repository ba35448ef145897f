"""Shared httpx plumbing for the HTTP providers.

Everything here is wire-format agnostic: the wire-format contract, client construction, the
retry policy, the SSE and NDJSON readers, and the one place that turns httpx exceptions and HTTP
error statuses into the :mod:`abstractcore.errors` tree. The sync and async shells that drive a
:class:`WireFormat` live in :mod:`._http_provider`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Protocol

import anyio
import httpx

from ..errors import (
    AuthenticationError,
    ConfigurationError,
    ContextLengthError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
    ProviderAPIError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitError,
    RequestTimeoutError,
)
from ..request import GenerationRequest
from ..types import GenerateResponse, StreamChunk

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_TIMEOUT",
    "ErrorInfo",
    "RetryPolicy",
    "SSEDecoder",
    "StreamFormat",
    "StreamParser",
    "WireEvent",
    "WireFormat",
    "aiter_events",
    "asleep",
    "check_base_url",
    "client_options",
    "client_timeout",
    "env_setting",
    "error_from_info",
    "error_from_response",
    "is_retryable",
    "iter_events",
    "json_object",
    "malformed_guard",
    "parse_retry_after",
    "sleep",
    "translate_errors",
]

logger = logging.getLogger("abstractcore.providers.http")

StreamFormat = Literal["sse", "ndjson"]

DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
"""LLM answers can take minutes to start, but a server that does not accept fails fast."""

DEFAULT_LIMITS = httpx.Limits(
    max_connections=100, max_keepalive_connections=20, keepalive_expiry=30.0
)
"""Room for many concurrent generations per provider instance without unbounded sockets."""

# Indirections the tests replace so backoff is observable without real waiting.
sleep: Callable[[float], None] = time.sleep


async def asleep(seconds: float) -> None:
    """Wait without blocking the event loop."""
    await anyio.sleep(seconds)


# ---------------------------------------------------------------------- wire-format contract
@dataclass(frozen=True)
class WireEvent:
    """One stream event: an SSE event (``name`` may be None) or one NDJSON line (no name)."""

    name: str | None
    data: str


@dataclass(frozen=True)
class ErrorInfo:
    """What an API's error body says, extracted by the wire format; classified here."""

    message: str
    code: str | None = None
    type: str | None = None
    param: str | None = None
    context_overflow: bool = False
    overloaded: bool = False
    status_hint: int | None = None  # the HTTP status an in-stream error stands for


class StreamParser(Protocol):
    """Turns stream events into chunks; the chunk with a finish_reason ends the stream."""

    def feed(self, event: WireEvent) -> list[StreamChunk]:
        """Chunks produced by one event (raises a ProviderError for error events)."""
        ...

    @property
    def done(self) -> bool:
        """Whether the API's terminal event has been seen."""
        ...


class WireFormat(Protocol):
    """One API's request/response mapping, pure and shared by the sync and async shells."""

    path: str
    stream_format: StreamFormat

    def headers(self) -> dict[str, str]:
        """Headers sent with every request (authentication, API version)."""
        ...

    def build_body(self, request: GenerationRequest, *, stream: bool) -> dict[str, Any]:
        """The JSON body for one request."""
        ...

    def parse_response(
        self, payload: dict[str, Any], request: GenerationRequest
    ) -> GenerateResponse:
        """Map a complete (non-streamed) JSON response to ``request``."""
        ...

    def stream_parser(self, request: GenerationRequest) -> StreamParser:
        """A fresh parser for the streamed response to ``request``."""
        ...

    def error_info(self, body: Any) -> ErrorInfo:
        """Read an error body (parsed JSON, or text when it was not JSON)."""
        ...


# ---------------------------------------------------------------------- errors, in one place
def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP-date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = -1.0
        if value >= 0:
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        seconds = max(0.0, when.timestamp() - time.time())
    return seconds if seconds >= 0 else None


def error_from_info(
    provider: str,
    info: ErrorInfo,
    *,
    status: int | None = None,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    url: str | None = None,
) -> ProviderError:
    """Classify an API error by status code and the body's code/type fields."""
    code = status if status is not None else info.status_hint
    where = f" from {url}" if url else ""
    shown = f"HTTP {status}" if status is not None else "error event"
    msg = f"{provider}: {shown}{where}: {info.message or 'no message'}"
    hdrs = dict(headers or {})
    # An error event inside a 200 stream carries the status its error type stands for.
    kw: dict[str, Any] = {"provider": provider, "status_code": code, "body": body, "headers": hdrs}
    retry_after = parse_retry_after(hdrs)
    if code in (401, 403):
        return AuthenticationError(msg, **kw)
    if code == 404:
        return ModelNotFoundError(msg, **kw)
    if code == 429:
        return RateLimitError(msg, retry_after=retry_after, **kw)
    if code in (503, 529) or info.overloaded:
        return OverloadedError(msg, retry_after=retry_after, **kw)
    if code == 408:
        return RequestTimeoutError(msg, **kw)
    if info.context_overflow:
        return ContextLengthError(msg, field=info.param, **kw)
    if code is not None and 400 <= code < 500:
        return InvalidRequestError(msg, field=info.param, **kw)
    return ProviderAPIError(msg, **kw)


def error_from_response(
    provider: str, wire: WireFormat, response: httpx.Response, raw: bytes
) -> ProviderError:
    """Classify an HTTP error response (its body already read)."""
    text = raw.decode("utf-8", errors="replace")
    body: Any
    try:
        body = json.loads(text)
    except ValueError:
        body = text
    try:
        info = wire.error_info(body)
    except (KeyError, TypeError, ValueError, AttributeError):
        info = ErrorInfo(message=text[:500])
    return error_from_info(
        provider,
        info,
        status=response.status_code,
        body=body,
        headers=response.headers,
        url=str(response.request.url),
    )


@contextmanager
def translate_errors(provider: str, *, receiving: bool) -> Iterator[None]:
    """Turn httpx exceptions into the abstractcore tree.

    ``receiving`` is True once a response's headers arrived: a connection lost then means a
    truncated response (ProviderAPIError), before it the backend was unreachable.
    """
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise ProviderUnavailableError(
            f"{provider}: cannot connect to {_url_of(exc)}: {exc}", provider=provider
        ) from exc
    except httpx.TimeoutException as exc:
        raise RequestTimeoutError(
            f"{provider}: request to {_url_of(exc)} timed out ({type(exc).__name__})",
            provider=provider,
        ) from exc
    except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
        if receiving:
            raise ProviderAPIError(
                f"{provider}: response from {_url_of(exc)} was cut off: {exc}", provider=provider
            ) from exc
        raise ProviderUnavailableError(
            f"{provider}: connection to {_url_of(exc)} lost before a reply: {exc}",
            provider=provider,
        ) from exc
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise ConfigurationError(
            f"{provider}: invalid base_url: {exc}", setting="base_url"
        ) from exc
    except httpx.HTTPError as exc:
        raise ProviderAPIError(f"{provider}: HTTP failure: {exc}", provider=provider) from exc


def _url_of(exc: httpx.HTTPError) -> str:
    try:
        return str(exc.request.url)
    except RuntimeError:  # no request attached
        return "the server"


@contextmanager
def malformed_guard(provider: str, what: str) -> Iterator[None]:
    """A body that does not have the documented shape is a ProviderAPIError, never a KeyError."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise ProviderAPIError(
            f"{provider}: malformed {what}: {type(exc).__name__}: {exc}", provider=provider
        ) from exc


def json_object(text: str | bytes, provider: str, what: str) -> dict[str, Any]:
    """Parse a JSON object or raise ProviderAPIError."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ProviderAPIError(
            f"{provider}: {what} is not valid JSON: {exc}", provider=provider, body=_clip(text)
        ) from exc
    if not isinstance(value, dict):
        raise ProviderAPIError(
            f"{provider}: {what} is not a JSON object", provider=provider, body=value
        )
    return value


def _clip(text: str | bytes) -> str:
    s = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
    return s[:2000]


# ---------------------------------------------------------------------- retries
@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; honours Retry-After; bounded attempts and total time."""

    max_retries: int = 2
    initial_delay: float = 0.5
    max_delay: float = 8.0
    max_total_s: float = 60.0

    def delay(self, exc: ProviderError, attempt: int, elapsed: float) -> float | None:
        """Seconds to wait before retry number ``attempt + 1``, or None to give up."""
        if attempt >= self.max_retries or not is_retryable(exc):
            return None
        hinted = getattr(exc, "retry_after", None)
        if hinted is not None:
            wait = float(hinted)
        else:
            backoff = min(self.max_delay, self.initial_delay * 2.0**attempt)
            wait = backoff * (1.0 - 0.25 * random.random())
        if elapsed + wait > self.max_total_s:
            return None
        return wait


def is_retryable(exc: ProviderError) -> bool:
    """Connect failures, 429, overload and 5xx are worth another try; other errors are not."""
    if isinstance(exc, (RateLimitError, OverloadedError, ProviderUnavailableError)):
        return True
    return isinstance(exc, ProviderAPIError) and (exc.status_code or 0) >= 500


# ---------------------------------------------------------------------- stream readers
class SSEDecoder:
    """Incremental Server-Sent Events decoder fed one line at a time (per the WHATWG spec)."""

    def __init__(self) -> None:
        self._name: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> WireEvent | None:
        """Consume a line; return the event a blank line completes."""
        if not line:
            if not self._data and self._name is None:
                return None
            event = WireEvent(self._name, "\n".join(self._data))
            self._name, self._data = None, []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._name = value
        elif name == "data":
            self._data.append(value)
        return None


def iter_events(lines: Iterator[str], fmt: StreamFormat) -> Generator[WireEvent, None, None]:
    """Events from a response's lines (SSE or NDJSON)."""
    decoder = SSEDecoder()
    for line in lines:
        event = _decode_line(decoder, line, fmt)
        if event is not None:
            yield event


async def aiter_events(
    lines: AsyncIterator[str], fmt: StreamFormat
) -> AsyncGenerator[WireEvent, None]:
    """Async twin of :func:`iter_events`."""
    decoder = SSEDecoder()
    async for line in lines:
        event = _decode_line(decoder, line, fmt)
        if event is not None:
            yield event


def _decode_line(decoder: SSEDecoder, line: str, fmt: StreamFormat) -> WireEvent | None:
    if fmt == "sse":
        return decoder.feed(line)
    return WireEvent(None, line) if line.strip() else None


# ---------------------------------------------------------------------- clients
def client_options(
    base_url: str, headers: Mapping[str, str], timeout: httpx.Timeout
) -> dict[str, Any]:
    """Keyword arguments shared by the Client and AsyncClient of one provider."""
    return {
        "base_url": base_url,
        "headers": {"accept": "application/json", "user-agent": "abstractcore", **headers},
        "timeout": timeout,
        "limits": DEFAULT_LIMITS,
        "verify": _ssl_context(),
    }


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle costs ~20-40 ms; every client of the process can share one context.
    return httpx.create_ssl_context()


def check_base_url(base_url: Any) -> str:
    """A validated http(s) base URL without a trailing slash (ConfigurationError otherwise)."""
    if not isinstance(base_url, str) or not base_url.strip():
        raise ConfigurationError("base_url must be a non-empty URL string", setting="base_url")
    try:
        url = httpx.URL(base_url.strip())
    except httpx.InvalidURL as exc:
        raise ConfigurationError(
            f"invalid base_url {base_url!r}: {exc}", setting="base_url"
        ) from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(
            f"base_url must be an http(s) URL with a host, got {base_url!r}", setting="base_url"
        )
    return str(url).rstrip("/")


def client_timeout(timeout: float | httpx.Timeout | None) -> httpx.Timeout:
    """The client timeout: a number sets read/write/pool, connect stays short."""
    if timeout is None:
        return DEFAULT_TIMEOUT
    if isinstance(timeout, httpx.Timeout):
        return timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigurationError(
            f"timeout must be a number > 0, got {timeout!r}", setting="timeout"
        )
    return httpx.Timeout(
        float(timeout), connect=min(float(timeout), DEFAULT_TIMEOUT.connect or 5.0)
    )


def env_setting(name: str) -> str | None:
    """An environment variable's value, with empty strings treated as unset."""
    value = os.environ.get(name, "").strip()
    return value or None
