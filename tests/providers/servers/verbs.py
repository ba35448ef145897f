"""Client-side helpers: run any of the four verbs and reduce the result to a comparable Outcome
(errors caught) or Answer (errors raised; tool calls, parsed output and logprobs kept)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio

from abstractcore.errors import ProviderError
from abstractcore.providers._http_provider import HTTPProvider
from abstractcore.types import GenerateResponse, StreamChunk, TokenLogprob, ToolCall

PROVIDERS = ("openai", "anthropic", "ollama")
VERBS = ("generate", "agenerate", "stream", "astream")


@dataclass(frozen=True)
class Outcome:
    """What one verb produced, comparable across verbs: a result or an error."""

    content: str | None = None
    finish_reason: str | None = None
    usage: tuple[int, int, int] | None = None
    error: type[BaseException] | None = None
    status_code: int | None = None


def _ok(content: str, finish: str | None, usage: Any) -> Outcome:
    u = (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) if usage else None
    return Outcome(content=content, finish_reason=finish, usage=u)


def _fail(exc: ProviderError) -> Outcome:
    return Outcome(error=type(exc), status_code=exc.status_code)


def check_stream(chunks: list[StreamChunk]) -> Outcome:
    """Join a stream; only its last chunk may carry finish_reason and usage."""
    assert chunks, "empty stream"
    assert all(c.finish_reason is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.finish_reason is not None and last.usage is not None
    return _ok("".join(c.content for c in chunks), last.finish_reason, last.usage)


def from_response(r: GenerateResponse) -> Outcome:
    """The comparable part of a response."""
    return _ok(r.content, r.finish_reason, r.usage)


async def run_verb(
    llm: HTTPProvider, verb: str, prompt: str = "hello there world", **kw: Any
) -> Outcome:
    """Run one of the four verbs (sync ones on a worker thread) and summarise the outcome."""
    try:
        if verb == "generate":
            return from_response(await anyio.to_thread.run_sync(lambda: llm.generate(prompt, **kw)))
        if verb == "agenerate":
            return from_response(await llm.agenerate(prompt, **kw))
        if verb == "stream":
            return check_stream(
                await anyio.to_thread.run_sync(lambda: list(llm.stream(prompt, **kw)))
            )
        chunks = [c async for c in llm.astream(prompt, **kw)]
        return check_stream(chunks)
    except ProviderError as exc:
        return _fail(exc)


@dataclass
class Answer:
    """What one verb produced, a stream joined: ``chunks`` is empty for the generate verbs."""

    content: str
    finish_reason: str
    tool_calls: list[ToolCall]
    parsed: Any
    logprobs: list[TokenLogprob] | None
    chunks: list[StreamChunk]


def _answer_of(r: GenerateResponse) -> Answer:
    return Answer(r.content, r.finish_reason, r.tool_calls, r.parsed, r.logprobs, [])


def _joined(chunks: list[StreamChunk]) -> Answer:
    check_stream(chunks)
    last = chunks[-1]
    assert last.finish_reason is not None
    logprobs = [lp for c in chunks for lp in (c.logprobs or [])]
    return Answer(
        "".join(c.content for c in chunks),
        last.finish_reason,
        last.tool_calls,
        last.parsed,
        logprobs or None,
        chunks,
    )


async def answer(llm: HTTPProvider, verb: str, prompt: str | None = None, **kw: Any) -> Answer:
    """Run one of the four verbs (sync ones on a worker thread); errors propagate."""
    if verb == "generate":
        return _answer_of(await anyio.to_thread.run_sync(lambda: llm.generate(prompt, **kw)))
    if verb == "agenerate":
        return _answer_of(await llm.agenerate(prompt, **kw))
    if verb == "stream":
        return _joined(await anyio.to_thread.run_sync(lambda: list(llm.stream(prompt, **kw))))
    return _joined([c async for c in llm.astream(prompt, **kw)])
