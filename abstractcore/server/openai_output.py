"""OpenAI response shapes: ``chat.completion`` and ``text_completion`` objects, and the events
of their streams (text, tool-call and logprob deltas, usage, ``[DONE]``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from ..types import FinishReason, GenerateResponse, StreamChunk, TokenLogprob, ToolCall, Usage
from .generation import KEEPALIVE, StreamRun
from .http_errors import openai_error_body
from .sse import sse_comment, sse_data

__all__ = [
    "ChunkWriter",
    "chat_json",
    "completion_json",
    "finish_reason",
    "logprobs_json",
    "stream_events",
    "tool_calls_json",
    "usage_json",
]


def finish_reason(reason: FinishReason | None, *, called: bool = False) -> str | None:
    """abstractcore finish reason -> OpenAI's (``cancelled`` never reaches a client); an
    answer that called tools ends with ``tool_calls`` unless it was cut off."""
    if reason is None:
        return None
    if called and reason in ("stop", "tool_calls"):
        return "tool_calls"
    return "stop" if reason in ("cancelled", "tool_calls") else reason


def usage_json(usage: Usage | None) -> dict[str, Any]:
    """OpenAI usage, with prompt-cache reuse in ``prompt_tokens_details.cached_tokens``."""
    u = usage or Usage()
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


def logprobs_json(items: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    """``choices[i].logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    if items is None:
        return None
    return {
        "content": [
            {
                "token": t.token,
                "logprob": t.logprob,
                "bytes": t.bytes,
                "top_logprobs": [
                    {"token": a.token, "logprob": a.logprob, "bytes": a.bytes}
                    for a in t.top_logprobs
                ],
            }
            for t in items
        ],
        "refusal": None,
    }


def tool_calls_json(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """``message.tool_calls``; ``arguments`` is the text the model wrote, unchanged."""
    return [
        {
            "id": c.id,
            "type": "function",
            "function": {"name": c.name, "arguments": c.raw_arguments},
        }
        for c in calls
    ]


def chat_json(resp: GenerateResponse, rid: str, model: str, created: int) -> dict[str, Any]:
    """A ``chat.completion`` object (``content`` is null when the model only called tools)."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": resp.content if resp.content or not resp.tool_calls else None,
        "refusal": None,
    }
    if resp.tool_calls:
        message["tool_calls"] = tool_calls_json(resp.tool_calls)
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": logprobs_json(resp.logprobs),
                "finish_reason": finish_reason(resp.finish_reason, called=bool(resp.tool_calls)),
            }
        ],
        "usage": usage_json(resp.usage),
        "system_fingerprint": None,
    }


def completion_json(resp: GenerateResponse, rid: str, model: str, created: int) -> dict[str, Any]:
    """A ``text_completion`` object."""
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": resp.content,
                "logprobs": None,
                "finish_reason": finish_reason(resp.finish_reason),
            }
        ],
        "usage": usage_json(resp.usage),
        "system_fingerprint": None,
    }


class _Call:
    """A streamed tool call: its position in the answer, and what was already sent once."""

    def __init__(self, position: int) -> None:
        self.position = position
        self.sent_id = False
        self.sent_name = False


class ChunkWriter:
    """Builds the stream chunks of one response (chat or text completion).

    Tool calls are numbered in the order they first appear (a provider's indexes need not
    start at 0); the id, type and name go once, on the first delta of a call that has them,
    since SDKs concatenate every string they receive for a call.
    """

    def __init__(self, chat: bool, rid: str, model: str, created: int) -> None:
        self.chat = chat
        self.base = {
            "id": rid,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": None,
        }
        self._calls: dict[int, _Call] = {}

    @property
    def called(self) -> bool:
        """Whether the answer called a tool."""
        return bool(self._calls)

    def choice(
        self,
        text: str | None,
        reason: str | None,
        *,
        role: bool = False,
        tool_calls: list[dict[str, Any]] | None = None,
        logprobs: Sequence[TokenLogprob] | None = None,
    ) -> bytes:
        """One chunk with one choice."""
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            if tool_calls:
                delta["tool_calls"] = tool_calls
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "logprobs": logprobs_json(logprobs) if logprobs else None,
                "finish_reason": reason,
            }
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}
        return sse_data({**self.base, "choices": [choice]})

    def tool_deltas(self, chunk: StreamChunk) -> list[dict[str, Any]]:
        """The ``delta.tool_calls`` entries of ``chunk``; whole calls that a provider gave
        only in the final chunk (without deltas) go out there, whole."""
        out: list[dict[str, Any]] = []
        for d in chunk.tool_call_deltas:
            call = self._calls.get(d.index)
            if call is None:
                call = self._calls[d.index] = _Call(len(self._calls))
            entry: dict[str, Any] = {"index": call.position}
            function: dict[str, Any] = {}
            if d.id and not call.sent_id:
                entry["id"], entry["type"], call.sent_id = d.id, "function", True
            if d.name and not call.sent_name:
                function["name"], call.sent_name = d.name, True
            function["arguments"] = d.arguments
            entry["function"] = function
            out.append(entry)
        if chunk.finish_reason is not None:
            for k, whole in enumerate(chunk.tool_calls):
                if k < len(self._calls):
                    continue  # streamed as deltas
                index = max(self._calls, default=-1) + 1
                self._calls[index] = _Call(len(self._calls))
                out.append({"index": self._calls[index].position, **tool_calls_json([whole])[0]})
        return out

    def usage(self, usage: Usage | None) -> bytes:
        """The last chunk of ``include_usage``: no choices, the usage."""
        return sse_data({**self.base, "choices": [], "usage": usage_json(usage)})


async def stream_events(
    run: StreamRun,
    first: StreamChunk | Any,
    writer: ChunkWriter,
    include_usage: bool,
    keepalive: float,
) -> AsyncIterator[bytes]:
    """The SSE events of one streamed response."""
    if writer.chat:
        yield writer.choice("", None, role=True)
    item: StreamChunk | Any = first
    reason: FinishReason | None = None
    try:
        while item is not None:
            if item is KEEPALIVE:
                yield sse_comment("keep-alive")
            else:
                assert isinstance(item, StreamChunk)
                calls = writer.tool_deltas(item) if writer.chat else []
                if item.content or calls or (writer.chat and item.logprobs):
                    yield writer.choice(
                        item.content or None, None, tool_calls=calls, logprobs=item.logprobs
                    )
                if item.finish_reason is not None:
                    reason = item.finish_reason
            item = await run.next(keepalive)
    except Exception as exc:  # noqa: BLE001 - the status is sent: report it in the stream
        err = run.fail(exc)
        yield sse_data(openai_error_body(err))
        return
    end = finish_reason(reason, called=writer.called) or "stop"
    yield writer.choice(None if writer.chat else "", end)
    if include_usage:
        yield writer.usage(run.usage)
    run.status = 200
    yield sse_data("[DONE]")
