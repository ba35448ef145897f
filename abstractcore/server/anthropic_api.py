"""The Anthropic Messages API: POST /v1/messages, with its streaming events."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..types import FinishReason, GenerateResponse, StreamChunk, Usage
from . import validation as v
from .errors import anthropic_error_body
from .openai_api import CACHE_KEY_HEADER, ChatParams
from .runner import KEEPALIVE, StreamRun, generate, open_stream
from .sse import EventStreamResponse, sse_event
from .state import ServerState

__all__ = ["message_json", "messages", "parse_messages_request", "usage_json"]

FIELDS = {"max_output_tokens": "max_tokens", "stop": "stop_sequences"}

_SUPPORTED = {
    "model",
    "max_tokens",
    "messages",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "stream",
    "metadata",
    "prompt_cache_key",
    "service_tier",
}
_NEUTRAL: dict[str, Callable[[Any], bool]] = {
    "cache_control": lambda x: True,  # a caching hint; our prompt cache works without it
    "tools": lambda x: x == [],
    "tool_choice": lambda x: x == {"type": "none"},
    "thinking": lambda x: x == {"type": "disabled"},
}
_BLOCK_KEYS = {"type", "text"}
_BLOCK_NEUTRAL: dict[str, Callable[[Any], bool]] = {
    "cache_control": lambda x: True,  # a caching hint; our prompt cache works without it
    "citations": lambda x: x == [],
}
_STOP_REASONS: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "cancelled": "end_turn",
}


def _text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise v.bad(where, f"'{where}' must be a string or a list of content blocks")
    texts: list[str] = []
    for j, block in enumerate(value):
        at = f"{where}.{j}"
        if not isinstance(block, dict):
            raise v.bad(at, f"'{at}' must be an object")
        if block.get("type") != "text":
            raise v.bad(
                f"{at}.type",
                f"'{at}.type': content block type {block.get('type')!r} is not supported "
                "(only 'text')",
            )
        v.check_fields(block, _BLOCK_KEYS, _BLOCK_NEUTRAL, prefix=f"{at}.")
        if not isinstance(block.get("text"), str):
            raise v.bad(f"{at}.text", f"'{at}.text' must be a string")
        texts.append(block["text"])
    return "\n".join(texts)


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise v.bad("messages", "'messages' must be a non-empty list")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(value):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise v.bad(where, f"'{where}' must be an object")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise v.bad(
                f"{where}.role",
                f"unknown role {role!r} in '{where}.role' (supported: user, assistant)",
            )
        v.check_fields(message, {"role", "content"}, prefix=f"{where}.")
        out.append({"role": role, "content": _text(message.get("content"), f"{where}.content")})
    return out


def parse_messages_request(
    body: Mapping[str, Any], request: Request, state: ServerState
) -> ChatParams:
    """Validate a Messages body into provider kwargs."""
    v.check_fields(body, _SUPPORTED, _NEUTRAL)
    max_tokens = v.opt_int(body, "max_tokens", minimum=1)
    if max_tokens is None:
        raise v.bad("max_tokens", "missing required field 'max_tokens'")
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise v.bad("metadata", "'metadata' must be an object")
        v.check_fields(metadata, {"user_id"}, prefix="metadata.")
    messages = _messages(body.get("messages"))
    system = body.get("system")
    if system is not None:
        messages.insert(0, {"role": "system", "content": _text(system, "system")})
    kwargs: dict[str, Any] = {
        "messages": messages,
        "max_output_tokens": state.cap_output_tokens(max_tokens),
        "temperature": v.opt_number(body, "temperature", minimum=0.0, maximum=1.0),
        "top_p": v.opt_number(body, "top_p", minimum=0.0, maximum=1.0, exclusive_minimum=True),
        "top_k": v.opt_int(body, "top_k", minimum=0),
        "stop": v.opt_stop(body, "stop_sequences", allow_str=False) or None,
        "prompt_cache_key": v.opt_str(body, "prompt_cache_key")
        or request.headers.get(CACHE_KEY_HEADER)
        or None,
    }
    stream = bool(v.opt_bool(body, "stream"))
    kwargs = {k: val for k, val in kwargs.items() if val is not None}
    return ChatParams(kwargs, stream, True, FIELDS)


def stop_reason(reason: FinishReason | None) -> str:
    """abstractcore finish reason -> Anthropic stop reason."""
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


def message_json(resp: GenerateResponse, mid: str, model: str) -> dict[str, Any]:
    """A ``message`` object."""
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": resp.content}],
        "stop_reason": stop_reason(resp.finish_reason),
        "stop_sequence": None,
        "usage": usage_json(resp.usage),
    }


async def _events(
    run: StreamRun, first: Any, mid: str, model: str, keepalive: float
) -> AsyncIterator[bytes]:
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
    yield sse_event(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    yield sse_event("ping", {"type": "ping"})
    item: Any = first
    reason: FinishReason | None = None
    try:
        while item is not None:
            if item is KEEPALIVE:
                yield sse_event("ping", {"type": "ping"})
            else:
                assert isinstance(item, StreamChunk)
                if item.content:
                    yield sse_event(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": 0,
                            "delta": {"type": "text_delta", "text": item.content},
                        },
                    )
                if item.finish_reason is not None:
                    reason = item.finish_reason
            item = await run.next(keepalive)
    except Exception as exc:  # noqa: BLE001 - the status is sent: report it in the stream
        yield sse_event("error", anthropic_error_body(run.fail(exc)))
        return
    yield sse_event("content_block_stop", {"type": "content_block_stop", "index": 0})
    yield sse_event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(reason), "stop_sequence": None},
            "usage": usage_json(run.usage),
        },
    )
    run.status = 200
    yield sse_event("message_stop", {"type": "message_stop"})


async def messages(request: Request, state: ServerState, started: float) -> Response:
    """POST /v1/messages."""
    body = await state.read_json(request)
    model = state.check_model(body.get("model"))
    params = parse_messages_request(body, request, state)
    mid = "msg_" + uuid.uuid4().hex
    if params.stream:
        run = open_stream(
            state, "messages", params.kwargs, started=started, field_names=params.field_names
        )
        keepalive = state.settings.keepalive_interval
        first = await run.first(keepalive)
        return EventStreamResponse(_events(run, first, mid, model, keepalive), on_close=run.close)
    resp = await generate(
        state,
        "messages",
        params.kwargs,
        receive=request.receive,
        started=started,
        field_names=params.field_names,
    )
    return JSONResponse(message_json(resp, mid, model))
