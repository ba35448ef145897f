"""Behaviour every HTTP provider shares, over real HTTP to the fake servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import anyio
import httpx
import pytest
from servers import PROVIDERS, check_stream, from_response

from abstractcore.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
    ProviderAPIError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitError,
    RequestTimeoutError,
)
from abstractcore.providers._http import (
    ErrorInfo,
    RetryPolicy,
    SSEDecoder,
    WireEvent,
    error_from_info,
    parse_retry_after,
)
from abstractcore.types import StreamChunk

each_provider = pytest.mark.parametrize("kind", PROVIDERS)

EXPECTED = "Echo: hello there world"


def _stream_until_error(chunks: Any) -> tuple[list[StreamChunk], ProviderError]:
    got: list[StreamChunk] = []
    with pytest.raises(ProviderError) as info:
        for chunk in chunks:
            got.append(chunk)  # noqa: PERF402 - keep what arrived before the error
    return got, info.value


async def _astream_until_error(chunks: Any) -> tuple[list[StreamChunk], ProviderError]:
    got: list[StreamChunk] = []
    with pytest.raises(ProviderError) as info:
        async for chunk in chunks:
            got.append(chunk)
    return got, info.value


# ---------------------------------------------------------------------- the four verbs
@each_provider
def test_generate_and_stream_agree(kind: str, make_llm: Any) -> None:
    llm = make_llm(kind)
    response = llm.generate("hello there world", system_prompt="be brief")
    assert response.content == EXPECTED
    assert response.finish_reason == "stop"
    assert response.provider == kind
    assert response.model == llm.model
    assert response.usage.completion_tokens == 4
    assert response.usage.prompt_tokens == 5  # "be brief" + "hello there world"
    assert response.timing.total_s is not None and response.raw is not None

    chunks = list(llm.stream("hello there world", system_prompt="be brief"))
    assert len([c for c in chunks if c.content]) == 4  # really streamed, one piece per token
    assert check_stream(chunks) == from_response(response)
    last = chunks[-1]
    assert last.timing is not None and last.timing.ttft_s is not None
    assert last.timing.total_s is not None and last.timing.total_s >= last.timing.ttft_s


@each_provider
@pytest.mark.anyio
async def test_agenerate_and_astream_agree(kind: str, make_llm: Any, no_blocking_loop: Any) -> None:
    async with make_llm(kind) as llm:
        response = await llm.agenerate("hello there world")
        chunks = [c async for c in llm.astream("hello there world")]
    assert response.content == EXPECTED and response.finish_reason == "stop"
    assert check_stream(chunks) == from_response(response)


@each_provider
@pytest.mark.anyio
async def test_a_prompt_cache_key_travels_as_a_header_for_proxies(
    kind: str, make_llm: Any, fake: Any
) -> None:
    llm = make_llm(kind)
    llm.generate("hello", prompt_cache_key="conv-9")
    list(llm.stream("hello", prompt_cache_key="conv-9"))
    await llm.agenerate("hello", prompt_cache_key="conv-9")
    [c async for c in llm.astream("hello", prompt_cache_key="caf\u00e9 1")]
    llm.generate("hello")
    await llm.aclose()
    got = [r.headers.get("x-prompt-cache-key") for r in fake.requests(llm.model)]
    assert got == ["conv-9", "conv-9", "conv-9", "caf%C3%A9%201", None]


@each_provider
def test_max_output_tokens_gives_length(kind: str, make_llm: Any) -> None:
    llm = make_llm(kind)
    response = llm.generate("hello there world", max_output_tokens=2)
    assert (response.content, response.finish_reason) == ("Echo: hello", "length")
    chunks = list(llm.stream("hello there world", max_output_tokens=2))
    assert "".join(c.content for c in chunks) == "Echo: hello"
    assert chunks[-1].finish_reason == "length"


@each_provider
def test_messages_input(kind: str, make_llm: Any) -> None:
    llm = make_llm(kind)
    response = llm.generate(
        messages=[
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "second question"},
        ]
    )
    assert response.content == "Echo: second question"


@each_provider
@pytest.mark.anyio
async def test_fifty_concurrent_agenerate(kind: str, make_llm: Any, no_blocking_loop: Any) -> None:
    async with make_llm(kind) as llm:
        results = await asyncio.gather(*(llm.agenerate(f"question {i}") for i in range(50)))
    assert [r.content for r in results] == [f"Echo: question {i}" for i in range(50)]
    assert all(r.finish_reason == "stop" for r in results)


# ---------------------------------------------------------------------- retries
@each_provider
@pytest.mark.parametrize(
    ("scenario", "waits"),
    [("429-then-ok", [3.0]), ("429-ms-then-ok", [1.5])],
)
def test_retry_after_is_honoured(
    kind: str, scenario: str, waits: list[float], make_llm: Any, fake: Any, backoff: list[float]
) -> None:
    llm = make_llm(kind, scenario)
    assert llm.generate("hello there world").content == EXPECTED
    assert fake.attempts(llm.model) == 2
    assert backoff == waits


@each_provider
def test_retry_after_http_date(kind: str, make_llm: Any, fake: Any, backoff: list[float]) -> None:
    llm = make_llm(kind, "429-date-then-ok")
    assert llm.generate("hello there world").content == EXPECTED
    assert fake.attempts(llm.model) == 2
    assert len(backoff) == 1 and 25.0 < backoff[0] <= 30.0


@each_provider
@pytest.mark.anyio
async def test_async_retries_match_sync(
    kind: str, make_llm: Any, fake: Any, backoff: list[float]
) -> None:
    async with make_llm(kind, "429-then-ok") as llm:
        assert (await llm.agenerate("hello there world")).content == EXPECTED
    assert fake.attempts(llm.model) == 2 and backoff == [3.0]


@each_provider
@pytest.mark.parametrize("scenario", ["500-then-ok", "drop-then-ok"])
def test_server_error_or_dropped_connection_then_success(
    kind: str, scenario: str, make_llm: Any, fake: Any, backoff: list[float]
) -> None:
    llm = make_llm(kind, scenario)
    assert llm.generate("hello there world").content == EXPECTED
    assert fake.attempts(llm.model) == 2
    assert len(backoff) == 1 and 0.375 <= backoff[0] <= 0.5  # first backoff step, with jitter


@each_provider
def test_attempts_are_bounded(kind: str, make_llm: Any, fake: Any, backoff: list[float]) -> None:
    llm = make_llm(kind, "500", max_retries=3)
    with pytest.raises(ProviderAPIError) as info:
        llm.generate("hello there world")
    assert info.value.status_code == 500 and info.value.body is not None
    assert fake.attempts(llm.model) == 4
    assert len(backoff) == 3 and backoff[0] < backoff[1] < backoff[2]  # exponential

    quiet = make_llm(kind, "500", max_retries=0)
    with pytest.raises(ProviderAPIError):
        quiet.generate("hello there world")
    assert fake.attempts(quiet.model) == 1


@each_provider
def test_rate_limit_error_carries_retry_after(
    kind: str, make_llm: Any, fake: Any, backoff: list[float]
) -> None:
    llm = make_llm(kind, "429")
    with pytest.raises(RateLimitError) as info:
        llm.generate("hello there world")
    assert info.value.retry_after == 1.0 and info.value.status_code == 429
    assert fake.attempts(llm.model) == 3 and backoff == [1.0, 1.0]


@each_provider
def test_retry_after_beyond_total_budget_is_not_waited(
    kind: str, make_llm: Any, fake: Any, backoff: list[float]
) -> None:
    llm = make_llm(kind, "429-long")
    with pytest.raises(RateLimitError) as info:
        llm.generate("hello there world")
    assert info.value.retry_after == 3600.0
    assert fake.attempts(llm.model) == 1 and backoff == []


@pytest.mark.parametrize(
    ("scenario", "error"),
    [
        ("401", AuthenticationError),
        ("403", AuthenticationError),
        ("404", ModelNotFoundError),
        ("400", InvalidRequestError),
    ],
)
@each_provider
def test_client_errors_are_typed_and_never_retried(
    kind: str,
    scenario: str,
    error: type[ProviderError],
    make_llm: Any,
    fake: Any,
    backoff: list[float],
) -> None:
    llm = make_llm(kind, scenario)
    with pytest.raises(error) as info:
        llm.generate("hello there world")
    assert info.value.status_code == int(scenario) and info.value.provider == kind
    assert fake.attempts(llm.model) == 1 and backoff == []


@each_provider
def test_overloaded(kind: str, make_llm: Any, fake: Any) -> None:
    llm = make_llm(kind, "overloaded")
    with pytest.raises(OverloadedError):
        llm.generate("hello there world")
    assert fake.attempts(llm.model) == 3


@each_provider
def test_stream_retries_only_before_the_first_chunk(kind: str, make_llm: Any, fake: Any) -> None:
    llm = make_llm(kind, "stream-error-then-ok")  # 200, then an error event as the first event
    assert check_stream(list(llm.stream("hello there world"))).content == EXPECTED
    assert fake.attempts(llm.model) == 2

    late = make_llm(kind, "stream-error-mid")  # one chunk, then an error event
    got, error = _stream_until_error(late.stream("hello there world"))
    assert [c.content for c in got] == ["Echo:"]
    assert isinstance(error, ProviderAPIError)
    assert fake.attempts(late.model) == 1


@each_provider
@pytest.mark.anyio
async def test_astream_retries_only_before_the_first_chunk(
    kind: str, make_llm: Any, fake: Any
) -> None:
    async with make_llm(kind, "stream-error-then-ok") as llm:
        assert check_stream([c async for c in llm.astream("hello there world")]).content == EXPECTED
    assert fake.attempts(llm.model) == 2
    async with make_llm(kind, "stream-error-mid") as late:
        got, error = await _astream_until_error(late.astream("hello there world"))
    assert [c.content for c in got] == ["Echo:"] and isinstance(error, ProviderAPIError)
    assert fake.attempts(late.model) == 1


# ---------------------------------------------------------------------- broken responses
@each_provider
@pytest.mark.parametrize("scenario", ["drop-mid-body", "malformed", "wrong-shape"])
def test_broken_body_is_a_provider_api_error(
    kind: str, scenario: str, make_llm: Any, fake: Any
) -> None:
    llm = make_llm(kind, scenario)
    with pytest.raises(ProviderAPIError) as info:
        llm.generate("hello there world")
    assert info.value.provider == kind
    assert fake.attempts(llm.model) == 1  # a 200 that broke is not retried


@each_provider
@pytest.mark.parametrize("scenario", ["drop-mid-body", "malformed", "wrong-shape", "no-terminal"])
def test_broken_stream_is_a_provider_api_error(kind: str, scenario: str, make_llm: Any) -> None:
    llm = make_llm(kind, scenario)
    got, error = _stream_until_error(llm.stream("hello there world"))
    assert type(error) is ProviderAPIError
    assert all(c.finish_reason is None for c in got)  # nothing claimed to be complete


@each_provider
@pytest.mark.anyio
@pytest.mark.parametrize("scenario", ["drop-mid-body", "malformed", "no-terminal"])
async def test_broken_astream_is_a_provider_api_error(
    kind: str, scenario: str, make_llm: Any
) -> None:
    async with make_llm(kind, scenario) as llm:
        got, error = await _astream_until_error(llm.astream("hello there world"))
    assert type(error) is ProviderAPIError
    assert all(c.finish_reason is None for c in got)


# ---------------------------------------------------------------------- timeouts, reachability
@each_provider
def test_request_timeout_overrides_client_timeout(kind: str, make_llm: Any, fake: Any) -> None:
    llm = make_llm(kind, "slow", timeout=30.0)
    start = time.monotonic()
    with pytest.raises(RequestTimeoutError):
        llm.generate("hello there world", timeout=0.2)
    assert time.monotonic() - start < 5.0
    assert fake.attempts(llm.model) == 1  # a read timeout is not retried


@each_provider
def test_client_timeout_applies_mid_stream(kind: str, make_llm: Any) -> None:
    llm = make_llm(kind, "slow-mid", timeout=0.2)
    got, error = _stream_until_error(llm.stream("hello there world"))
    assert isinstance(error, RequestTimeoutError) and [c.content for c in got] == ["Echo:"]
    with pytest.raises(RequestTimeoutError):
        llm.generate("hello there world")  # headers came, the body stalled


@each_provider
@pytest.mark.anyio
async def test_async_timeout(kind: str, make_llm: Any) -> None:
    async with make_llm(kind, "slow") as llm:
        with pytest.raises(RequestTimeoutError):
            await llm.agenerate("hello there world", timeout=0.2)
        with pytest.raises(RequestTimeoutError):
            [c async for c in llm.astream("hello there world", timeout=0.2)]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@each_provider
def test_unreachable_server(kind: str, make_llm: Any, backoff: list[float]) -> None:
    llm = make_llm(kind, base_url=f"http://127.0.0.1:{_closed_port()}/v1")
    with pytest.raises(ProviderUnavailableError):
        llm.generate("hello there world")
    assert len(backoff) == 2  # connect errors are retried
    with pytest.raises(ProviderUnavailableError):
        list(llm.stream("hello there world"))


@each_provider
def test_dropped_before_reply_is_unavailable(kind: str, make_llm: Any, fake: Any) -> None:
    llm = make_llm(kind, "drop")
    with pytest.raises(ProviderUnavailableError):
        llm.generate("hello there world")
    assert fake.attempts(llm.model) == 3


@each_provider
@pytest.mark.parametrize("base_url", ["ftp://example.com", "not a url", "http://"])
def test_bad_base_url_is_a_configuration_error(kind: str, make_llm: Any, base_url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        make_llm(kind, base_url=base_url)
    assert info.value.setting == "base_url"


@each_provider
@pytest.mark.parametrize(("option", "value"), [("max_retries", -1), ("timeout", 0)])
def test_bad_transport_options(kind: str, make_llm: Any, option: str, value: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        make_llm(kind, **{option: value})
    assert info.value.setting == option


# ---------------------------------------------------------------------- lifecycle
@each_provider
def test_close_releases_every_connection(
    kind: str, make_llm: Any, fake: Any, no_thread_leak: Any
) -> None:
    llm = make_llm(kind)
    llm.generate("hello there world")
    list(llm.stream("hello there world"))
    assert fake.open_client_sockets(), "keep-alive connection expected before close()"
    llm.close()
    assert fake.open_client_sockets() == []
    with make_llm(kind) as other:  # context manager closes too
        other.generate("hello there world")
    assert fake.open_client_sockets() == []


@each_provider
@pytest.mark.anyio
async def test_aclose_releases_every_connection(
    kind: str, make_llm: Any, fake: Any, no_thread_leak: Any, no_blocking_loop: Any
) -> None:
    llm = make_llm(kind)
    await asyncio.gather(*(llm.agenerate("hello there world") for _ in range(5)))
    assert fake.open_client_sockets()
    await llm.aclose()
    await anyio.lowlevel.checkpoint()  # asyncio closes a transport's socket on the next loop turn
    assert fake.open_client_sockets() == []


@each_provider
def test_sync_close_also_closes_the_async_client(kind: str, make_llm: Any, fake: Any) -> None:
    llm = make_llm(kind)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(llm.agenerate("hello there world"))
        assert fake.open_client_sockets()
        llm.close()  # from sync code, while the client's loop is idle
        loop.run_until_complete(asyncio.sleep(0))  # one turn: asyncio closes sockets on the next
        assert fake.open_client_sockets() == []
    finally:
        loop.close()


@each_provider
def test_aclose_also_closes_the_sync_client(kind: str, make_llm: Any, fake: Any) -> None:
    llm = make_llm(kind)
    llm.generate("hello there world")
    assert fake.open_client_sockets()
    asyncio.run(llm.aclose())
    assert fake.open_client_sockets() == []


@each_provider
def test_abandoned_stream_releases_its_connection(kind: str, make_llm: Any, fake: Any) -> None:
    llm = make_llm(kind)
    chunks = llm.stream("hello there world")
    assert next(chunks).content == "Echo:"
    assert fake.open_client_sockets()
    chunks.close()  # the consumer stops early: the half-read response must not linger
    assert fake.open_client_sockets() == []
    assert llm.generate("hello there world").content == EXPECTED  # and the provider still works


@each_provider
@pytest.mark.anyio
async def test_abandoned_astream_releases_its_connection(
    kind: str, make_llm: Any, fake: Any
) -> None:
    async with make_llm(kind) as llm:
        chunks = llm.astream("hello there world")
        assert (await anext(chunks)).content == "Echo:"
        await chunks.aclose()  # type: ignore[attr-defined]
        await anyio.lowlevel.checkpoint()
        assert fake.open_client_sockets() == []
        assert (await llm.agenerate("hello there world")).content == EXPECTED


@each_provider
def test_each_event_loop_gets_its_own_client(kind: str, make_llm: Any) -> None:
    llm = make_llm(kind)

    async def once() -> str:
        text = (await llm.agenerate("hello there world")).content
        await llm.aclose()
        return text

    assert asyncio.run(once()) == asyncio.run(once()) == EXPECTED


# ---------------------------------------------------------------------- pure plumbing
def test_parse_retry_after() -> None:
    assert parse_retry_after(httpx.Headers({"retry-after": "7"})) == 7.0
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    assert parse_retry_after(httpx.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0
    assert parse_retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert parse_retry_after(httpx.Headers({})) is None


def test_retry_policy_bounds() -> None:
    policy = RetryPolicy(max_retries=5, initial_delay=1.0, max_delay=4.0, max_total_s=10.0)
    server = ProviderAPIError("x", status_code=500)
    assert [policy.delay(server, n, 0.0) is not None for n in range(6)] == [True] * 5 + [False]
    assert all(policy.delay(server, n, 0.0) <= 4.0 for n in range(5))  # type: ignore[operator]
    assert policy.delay(server, 0, 9.9) is None  # would overrun the total budget
    assert policy.delay(InvalidRequestError("x", status_code=400), 0, 0.0) is None
    assert policy.delay(ProviderAPIError("truncated"), 0, 0.0) is None
    assert policy.delay(RateLimitError("x", retry_after=2.5), 0, 0.0) == 2.5


def test_sse_decoder() -> None:
    d = SSEDecoder()
    lines = [": comment", "event: delta", "data: a", "data: b", "", "data:x", "", "id: 3", ""]
    events = [e for e in map(d.feed, lines) if e is not None]
    assert events == [WireEvent("delta", "a\nb"), WireEvent(None, "x")]


def test_error_classification_ignores_message_text() -> None:
    info = ErrorInfo(message="maximum context length exceeded")  # text alone is not a code
    assert type(error_from_info("p", info, status=400)) is InvalidRequestError
    assert type(error_from_info("p", info, status=529)) is OverloadedError
    assert type(error_from_info("p", info, status=418)) is InvalidRequestError
    assert type(error_from_info("p", info, status=599)) is ProviderAPIError
