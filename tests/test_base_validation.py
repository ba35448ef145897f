"""BaseProvider validates every public argument into a GenerationRequest, for all four verbs.

The provider here is a double of the *contract*: it streams its validated input back, so
these tests exercise base.py itself (validation, defaults, collection), not a backend.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from abstractcore import GenerateResponse, Message, StreamChunk, Usage
from abstractcore.errors import InvalidRequestError, ProviderAPIError
from abstractcore.providers.base import BaseProvider
from abstractcore.request import GenerationRequest


class EchoProvider(BaseProvider):
    """Streams the last message back word by word and records the request it was given."""

    provider_name = "echo"

    def __init__(self, model: str = "echo-1", *, truncate: bool = False, **defaults: Any) -> None:
        super().__init__(model, **defaults)
        self.truncate = truncate
        self.requests: list[GenerationRequest] = []

    def _chunks(self, request: GenerationRequest) -> list[StreamChunk]:
        self.requests.append(request)
        words = request.messages[-1].content.split(" ")
        chunks = [StreamChunk(content=(" " if i else "") + w) for i, w in enumerate(words)]
        if not self.truncate:
            usage = Usage(prompt_tokens=len(request.messages), completion_tokens=len(words))
            chunks.append(StreamChunk(finish_reason="stop", usage=usage))
        return chunks

    def _stream(self, request: GenerationRequest) -> Iterator[StreamChunk]:
        yield from self._chunks(request)

    async def _astream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        for chunk in self._chunks(request):
            yield chunk


def _call_generate(llm: BaseProvider, *a: Any, **kw: Any) -> Any:
    return llm.generate(*a, **kw)


def _call_stream(llm: BaseProvider, *a: Any, **kw: Any) -> Any:
    return llm.stream(*a, **kw)  # must fail here, before the iterator is advanced


async def _call_agenerate(llm: BaseProvider, *a: Any, **kw: Any) -> Any:
    return await llm.agenerate(*a, **kw)


async def _call_astream(llm: BaseProvider, *a: Any, **kw: Any) -> Any:
    return llm.astream(*a, **kw)  # must fail here, before the iterator is advanced


SYNC_VERBS: list[Callable[..., Any]] = [_call_generate, _call_stream]
ASYNC_VERBS: list[Callable[..., Any]] = [_call_agenerate, _call_astream]

# (keyword arguments, field the error must name)
BAD_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"max_output_tokens": -5}, "max_output_tokens"),
    ({"max_output_tokens": 1.5}, "max_output_tokens"),
    ({"max_output_tokens": "16"}, "max_output_tokens"),
    ({"max_output_tokens": True}, "max_output_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"temperature": math.inf}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": -0.2}, "top_p"),
    ({"top_p": "0.9"}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"seed": "42"}, "seed"),
    ({"seed": 4.2}, "seed"),
    ({"seed": False}, "seed"),
    ({"stop": ""}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"stop": ["ok", 3]}, "stop"),
    ({"stop": 5}, "stop"),
    ({"stop": {"a"}}, "stop"),
    ({"prompt_cache_key": ""}, "prompt_cache_key"),
    ({"prompt_cache_key": 7}, "prompt_cache_key"),
    ({"timeout": 0}, "timeout"),
    ({"timeout": -1}, "timeout"),
    ({"timeout": "10"}, "timeout"),
    ({"timeout": math.nan}, "timeout"),
    ({"system_prompt": 3}, "system_prompt"),
    ({"temprature": 0.3}, "temprature"),  # a typo is an error, never silently dropped
    ({"tools": "search"}, "tools"),
    ({"tools": [{"name": "ok"}, "search"]}, "tools[1]"),
]

# (positional prompt, keyword arguments, field the error must name)
BAD_INPUTS: list[tuple[Any, dict[str, Any], str]] = [
    (None, {}, "prompt"),
    ("hi", {"messages": [{"role": "user", "content": "hi"}]}, "messages"),
    ("", {}, "prompt"),
    (42, {}, "prompt"),
    (b"bytes", {}, "prompt"),
    (None, {"messages": []}, "messages"),
    (None, {"messages": "hi"}, "messages"),
    (None, {"messages": {"role": "user", "content": "hi"}}, "messages"),
    (None, {"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    (None, {"messages": [{"content": "hi"}]}, "messages[0].role"),
    (None, {"messages": [{"role": "user"}]}, "messages[0].content"),
    (None, {"messages": [{"role": "user", "content": "a", "colour": "red"}]}, "messages[0].colour"),
    (None, {"messages": [{"role": "user", "content": "a"}, "hello"]}, "messages[1]"),
    (None, {"messages": [{"role": "user", "content": "a"}, 5]}, "messages[1]"),
    (None, {"messages": [{"role": "system", "content": "be nice"}]}, "messages"),
]


def _check(exc: pytest.ExceptionInfo[InvalidRequestError], field: str) -> None:
    assert exc.value.field == field, (exc.value.field, str(exc.value))
    assert field.split("[")[0] in str(exc.value)


@pytest.mark.parametrize("verb", SYNC_VERBS, ids=lambda v: v.__name__[6:])
@pytest.mark.parametrize(
    ("kwargs", "field"), BAD_FIELDS, ids=[f"{f}={next(iter(k.values()))!r}" for k, f in BAD_FIELDS]
)
def test_bad_field_sync(verb: Callable[..., Any], kwargs: dict[str, Any], field: str) -> None:
    llm = EchoProvider()
    with pytest.raises(InvalidRequestError) as exc:
        verb(llm, "hello", **kwargs)
    _check(exc, field)
    assert llm.requests == []


@pytest.mark.anyio
@pytest.mark.parametrize("verb", ASYNC_VERBS, ids=lambda v: v.__name__[6:])
@pytest.mark.parametrize(
    ("kwargs", "field"), BAD_FIELDS, ids=[f"{f}={next(iter(k.values()))!r}" for k, f in BAD_FIELDS]
)
async def test_bad_field_async(
    verb: Callable[..., Any], kwargs: dict[str, Any], field: str
) -> None:
    llm = EchoProvider()
    with pytest.raises(InvalidRequestError) as exc:
        await verb(llm, "hello", **kwargs)
    _check(exc, field)
    assert llm.requests == []


@pytest.mark.parametrize("verb", SYNC_VERBS, ids=lambda v: v.__name__[6:])
@pytest.mark.parametrize(
    ("prompt", "kwargs", "field"), BAD_INPUTS, ids=[str(i) for i in range(len(BAD_INPUTS))]
)
def test_bad_prompt_or_messages_sync(
    verb: Callable[..., Any], prompt: Any, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        verb(EchoProvider(), prompt, **kwargs)
    _check(exc, field)


@pytest.mark.anyio
@pytest.mark.parametrize("verb", ASYNC_VERBS, ids=lambda v: v.__name__[6:])
@pytest.mark.parametrize(
    ("prompt", "kwargs", "field"), BAD_INPUTS, ids=[str(i) for i in range(len(BAD_INPUTS))]
)
async def test_bad_prompt_or_messages_async(
    verb: Callable[..., Any], prompt: Any, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        await verb(EchoProvider(), prompt, **kwargs)
    _check(exc, field)


def test_bad_message_error_is_chained_from_its_cause() -> None:
    with pytest.raises(InvalidRequestError) as exc:
        EchoProvider().generate(messages=[{"role": "user", "content": 5}])
    assert exc.value.field == "messages[0].content"
    assert exc.value.__cause__ is not None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"model": ""}, "model"),
        ({"model": "   "}, "model"),
        ({"model": None}, "model"),
        ({"model": 3}, "model"),
        ({"temperature": -1}, "temperature"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"stop": [1]}, "stop"),
        ({"top_p": 2}, "top_p"),
        ({"temprature": 0.5}, "temprature"),
        ({"base_url_typo": "x", "zzz": 1}, "base_url_typo"),
    ],
)
def test_bad_constructor_argument_fails_at_construction(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        EchoProvider(**kwargs)
    assert exc.value.field == field


def test_valid_request_is_normalised() -> None:
    llm = EchoProvider()
    resp = llm.generate(
        "hello there",
        system_prompt="be brief",
        max_output_tokens=8,
        temperature=0,
        top_p=1,
        top_k=0,
        seed=-3,
        stop=("a", "b"),
        prompt_cache_key="conv-1",
        timeout=2,
    )
    req = llm.requests[-1]
    assert [m.role for m in req.messages] == ["system", "user"]
    assert req.messages[0].content == "be brief"
    assert (req.max_output_tokens, req.top_k, req.seed) == (8, 0, -3)
    assert isinstance(req.temperature, float) and req.temperature == 0.0
    assert isinstance(req.top_p, float) and req.top_p == 1.0
    assert req.stop == ["a", "b"] and req.prompt_cache_key == "conv-1" and req.timeout == 2.0
    assert isinstance(resp, GenerateResponse)
    assert resp.content == "hello there" and resp.finish_reason == "stop"
    assert resp.provider == "echo" and resp.model == "echo-1"
    assert resp.usage.completion_tokens == 2


def test_single_stop_string_and_message_objects() -> None:
    llm = EchoProvider()
    msgs = [Message(role="user", content="one"), {"role": "assistant", "content": "two"}]
    llm.generate(messages=[*msgs, {"role": "user", "content": "three"}], stop="END")
    req = llm.requests[-1]
    assert req.stop == ["END"]
    assert [m.content for m in req.messages] == ["one", "two", "three"]
    assert all(isinstance(m, Message) for m in req.messages)


def test_constructor_defaults_apply_and_calls_override_them() -> None:
    llm = EchoProvider(temperature=0.5, max_output_tokens=4, stop="X", timeout=None)
    llm.generate("a")
    first = llm.requests[-1]
    assert (first.temperature, first.max_output_tokens, first.stop, first.timeout) == (
        0.5,
        4,
        ["X"],
        None,
    )
    llm.generate("a", temperature=0.0, stop=["Y"])
    second = llm.requests[-1]
    assert (second.temperature, second.max_output_tokens, second.stop) == (0.0, 4, ["Y"])
    assert "timeout" not in llm.defaults  # None means unset, not a default of None


def test_stream_joins_to_generate_and_last_chunk_finishes() -> None:
    llm = EchoProvider()
    chunks = list(llm.stream("the quick brown fox"))
    assert "".join(c.content for c in chunks) == llm.generate("the quick brown fox").content
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage is not None
    assert all(c.finish_reason is None for c in chunks[:-1])


@pytest.mark.anyio
async def test_astream_joins_to_agenerate() -> None:
    llm = EchoProvider()
    chunks = [c async for c in llm.astream("jumps over the dog")]
    resp = await llm.agenerate("jumps over the dog")
    assert "".join(c.content for c in chunks) == resp.content == "jumps over the dog"
    assert resp.timing.total_s is not None and resp.timing.total_s >= 0


def test_truncated_stream_is_an_error_not_partial_success() -> None:
    llm = EchoProvider(truncate=True)
    with pytest.raises(ProviderAPIError, match="truncated"):
        llm.generate("partial text")


@pytest.mark.anyio
async def test_truncated_astream_is_an_error_not_partial_success() -> None:
    with pytest.raises(ProviderAPIError, match="truncated"):
        await EchoProvider(truncate=True).agenerate("partial text")


def test_context_managers_close() -> None:
    closed: list[str] = []

    class Closing(EchoProvider):
        def close(self) -> None:
            closed.append("close")

    with Closing() as llm:
        assert isinstance(llm, Closing)
    assert closed == ["close"]


@pytest.mark.anyio
async def test_async_context_manager_closes() -> None:
    closed: list[str] = []

    class Closing(EchoProvider):
        async def aclose(self) -> None:
            closed.append("aclose")

    async with Closing() as llm:
        assert isinstance(llm, Closing)
    assert closed == ["aclose"]
