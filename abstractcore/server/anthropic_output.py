"""Anthropic response shapes: the ``message`` object and the events of its stream (text and
``tool_use`` content blocks, ``input_json_delta``, ``message_delta``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

from ..types import FinishReason, GenerateResponse, StreamChunk, ToolCall, ToolCallDelta, Usage
from .generation import KEEPALIVE, StreamRun
from .http_errors import anthropic_error_body
from .sse import sse_event

__all__ = ["BlockWriter", "message_events", "message_json", "stop_reason", "usage_json"]

_STOP_REASONS: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "cancelled": "end_turn",
}


def stop_reason(reason: FinishReason | None, *, called: bool = False) -> str:
    """abstractcore finish reason -> Anthropic stop reason (``tool_use`` when the answer
    called tools, unless it was cut off)."""
    if called and reason in (None, "stop", "tool_calls"):
        return "tool_use"
    if reason == "tool_calls":
        return "end_turn"
    return _STOP_REASONS.get(reason or "stop", "end_turn")


def usage_json(usage: Usage | None) -> dict[str, Any]:
    """Anthropic usage: cache reads are reported apart from (not inside) input tokens."""
    u = usage or Usage()
    return {
        "input_tokens": max(0, u.prompt_tokens - u.cached_tokens),
        "output_tokens": u.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": u.cached_tokens,
    }


def _tool_use(call: ToolCall) -> dict[str, Any]:
    # ``input`` must be an object: arguments that are not a JSON object come back as {}
    # (a stream sends the model's text itself, as input_json_delta fragments).
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}


def message_json(resp: GenerateResponse, mid: str, model: str) -> dict[str, Any]:
    """A ``message`` object: a text block (unless the model only called tools), then one
    ``tool_use`` block per call."""
    content: list[dict[str, Any]] = []
    if resp.content or not resp.tool_calls:
        content.append({"type": "text", "text": resp.content})
    content.extend(_tool_use(c) for c in resp.tool_calls)
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(resp.finish_reason, called=bool(resp.tool_calls)),
        "stop_sequence": None,
        "usage": usage_json(resp.usage),
    }


class BlockWriter:
    """The content blocks of one streamed message, opened and closed in order.

    A text block opens at the first text (or at once, ``eager``: a request without tools
    always gets exactly one text block, first); each tool call opens a ``tool_use`` block
    whose input arrives as ``input_json_delta`` fragments. Every method returns the events
    it made.
    """

    def __init__(self, *, eager: bool) -> None:
        self._events: list[bytes] = []
        self._count = 0
        self._open: int | None = None  # the index of the open block
        self._text_open = False
        self._tools: dict[int, int] = {}  # the provider's call index -> block index
        if eager:
            self._start({"type": "text", "text": ""}, text=True)

    @property
    def called(self) -> bool:
        """Whether the answer called a tool."""
        return bool(self._tools)

    def opening(self) -> list[bytes]:
        """The events of the block opened at construction (none unless ``eager``)."""
        return self._flush()

    def text(self, text: str) -> list[bytes]:
        """The events for a piece of text."""
        if not self._text_open:
            self._start({"type": "text", "text": ""}, text=True)
        assert self._open is not None
        self._delta(self._open, {"type": "text_delta", "text": text})
        return self._flush()

    def tool(self, d: ToolCallDelta) -> list[bytes]:
        """The events for a piece of a tool call."""
        block = self._tools.get(d.index)
        if block is None:
            call_id = d.id or "toolu_" + uuid.uuid4().hex[:24]
            tool_use = {"type": "tool_use", "id": call_id, "name": d.name or "", "input": {}}
            block = self._tools[d.index] = self._start(tool_use, text=False)
        if d.arguments:
            self._delta(block, {"type": "input_json_delta", "partial_json": d.arguments})
        return self._flush()

    def whole_calls(self, calls: list[ToolCall]) -> list[bytes]:
        """Calls a provider gave only in the final chunk, without deltas."""
        out: list[bytes] = []
        for call in calls[len(self._tools) :]:
            index = max(self._tools, default=-1) + 1
            d = ToolCallDelta(index=index, id=call.id, name=call.name, arguments=call.raw_arguments)
            out += self.tool(d)
        return out

    def close(self) -> list[bytes]:
        """The end of the content: at least one (maybe empty) text block, all closed."""
        if self._count == 0:
            self._start({"type": "text", "text": ""}, text=True)
        self._stop()
        return self._flush()

    def _start(self, block: dict[str, Any], *, text: bool) -> int:
        self._stop()
        index = self._open = self._count
        self._text_open = text
        self._count += 1
        self._emit(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": block},
        )
        return index

    def _stop(self) -> None:
        if self._open is not None:
            self._emit("content_block_stop", {"type": "content_block_stop", "index": self._open})
        self._open, self._text_open = None, False

    def _delta(self, index: int, delta: dict[str, Any]) -> None:
        self._emit(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        )

    def _emit(self, name: str, data: dict[str, Any]) -> None:
        self._events.append(sse_event(name, data))

    def _flush(self) -> list[bytes]:
        out, self._events = self._events, []
        return out


async def message_events(
    run: StreamRun, first: Any, mid: str, model: str, keepalive: float, *, eager_text: bool
) -> AsyncIterator[bytes]:
    """The SSE events of one streamed message."""
    start: dict[str, Any] = {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    yield sse_event("message_start", {"type": "message_start", "message": start})
    blocks = BlockWriter(eager=eager_text)
    for event in blocks.opening():
        yield event
    yield sse_event("ping", {"type": "ping"})
    item: Any = first
    reason: FinishReason | None = None
    try:
        while item is not None:
            if item is KEEPALIVE:
                yield sse_event("ping", {"type": "ping"})
            else:
                assert isinstance(item, StreamChunk)
                events = blocks.text(item.content) if item.content else []
                for d in item.tool_call_deltas:
                    events += blocks.tool(d)
                if item.finish_reason is not None:
                    reason = item.finish_reason
                    events += blocks.whole_calls(item.tool_calls)
                for event in events:
                    yield event
            item = await run.next(keepalive)
    except Exception as exc:  # noqa: BLE001 - the status is sent: report it in the stream
        yield sse_event("error", anthropic_error_body(run.fail(exc)))
        return
    for event in blocks.close():
        yield event
    yield sse_event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {
                "stop_reason": stop_reason(reason, called=blocks.called),
                "stop_sequence": None,
            },
            "usage": usage_json(run.usage),
        },
    )
    run.status = 200
    yield sse_event("message_stop", {"type": "message_stop"})
