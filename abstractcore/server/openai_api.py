"""The OpenAI API: /v1/chat/completions, /v1/completions, /v1/models.

Request bodies are validated here into provider keyword arguments (a 400 names the wire
field), and responses and stream chunks are built in OpenAI's shapes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..types import FinishReason, GenerateResponse, StreamChunk, Usage
from . import validation as v
from .errors import openai_error_body
from .runner import KEEPALIVE, StreamRun, generate, open_stream
from .sse import EventStreamResponse, sse_comment, sse_data
from .state import ServerState

__all__ = [
    "CACHE_KEY_HEADER",
    "ChatParams",
    "chat_completions",
    "completions",
    "list_models",
    "parse_chat",
    "parse_completion",
    "usage_json",
]

CACHE_KEY_HEADER = "x-prompt-cache-key"

# provider-side field -> the name the client used
COMPLETION_FIELDS = {"max_output_tokens": "max_tokens", "messages": "prompt"}

_CHAT_SUPPORTED = {
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "prompt_cache_key",
    "user",
    "safety_identifier",
    "stream",
    "stream_options",
    "n",
    "metadata",
    "store",
    "service_tier",
}
_NEUTRAL: dict[str, Callable[[Any], bool]] = {
    "frequency_penalty": v.is_default(0, 0.0),
    "presence_penalty": v.is_default(0, 0.0),
    "logprobs": v.is_default(False),
    "top_logprobs": v.is_default(0),
    "logit_bias": lambda x: x == {},
    "response_format": lambda x: x == {"type": "text"},
    "tools": lambda x: x == [],
    "tool_choice": v.is_default("none"),
    "parallel_tool_calls": lambda x: isinstance(x, bool),
    "modalities": lambda x: x == ["text"],
}
_COMPLETION_SUPPORTED = {
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "prompt_cache_key",
    "user",
    "stream",
    "stream_options",
    "n",
    "best_of",
}
_COMPLETION_NEUTRAL: dict[str, Callable[[Any], bool]] = {
    "frequency_penalty": v.is_default(0, 0.0),
    "presence_penalty": v.is_default(0, 0.0),
    "logprobs": v.is_default(0),
    "logit_bias": lambda x: x == {},
    "echo": v.is_default(False),
    "suffix": lambda x: x == "",
}
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_MESSAGE_KEYS = {"role", "content", "name"}
_MESSAGE_NEUTRAL: dict[str, Callable[[Any], bool]] = {
    "tool_calls": lambda x: x == [],
    "refusal": lambda x: False,
    "audio": lambda x: False,
}


@dataclass
class ChatParams:
    """A validated request: provider kwargs plus how to answer."""

    kwargs: dict[str, Any]
    stream: bool
    include_usage: bool
    field_names: Mapping[str, str]  # provider-side field -> the name the client used


# ---------------------------------------------------------------------- parsing
def _common(
    body: Mapping[str, Any], request: Request, state: ServerState, max_tokens: int | None
) -> dict[str, Any]:
    n = v.opt_int(body, "n", minimum=1)
    if n is not None and n > 1:
        raise v.bad("n", "'n' > 1 is not supported; send n separate requests")
    kwargs: dict[str, Any] = {
        "max_output_tokens": state.cap_output_tokens(max_tokens),
        "temperature": v.opt_number(body, "temperature", minimum=0.0, maximum=2.0),
        "top_p": v.opt_number(body, "top_p", minimum=0.0, maximum=1.0, exclusive_minimum=True),
        "top_k": v.opt_int(body, "top_k", minimum=0),
        "seed": v.opt_int(body, "seed"),
        "stop": v.opt_stop(body, "stop") or None,
        "prompt_cache_key": v.opt_str(body, "prompt_cache_key")
        or request.headers.get(CACHE_KEY_HEADER)
        or None,
    }
    v.opt_str(body, "user", allow_empty=True)
    return {k: val for k, val in kwargs.items() if val is not None}


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = bool(v.opt_bool(body, "stream"))
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise v.bad("stream_options", "'stream_options' must be an object")
        if not stream:
            raise v.bad("stream_options", "'stream_options' is only allowed when 'stream' is true")
        v.check_fields(options, {"include_usage", "include_obfuscation"}, prefix="stream_options.")
        include_usage = bool(v.opt_bool(options, "include_usage"))
    return stream, include_usage


def _message_content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts: list[str] = []
        for j, part in enumerate(value):
            if not isinstance(part, dict):
                raise v.bad(f"{where}[{j}]", f"'{where}[{j}]' must be an object")
            if part.get("type") != "text":
                raise v.bad(
                    f"{where}[{j}].type",
                    f"'{where}[{j}].type': content part type {part.get('type')!r} "
                    "is not supported (only 'text')",
                )
            v.check_fields(part, {"type", "text"}, prefix=f"{where}[{j}].")
            text = part.get("text")
            if not isinstance(text, str):
                raise v.bad(f"{where}[{j}].text", f"'{where}[{j}].text' must be a string")
            texts.append(text)
        return "\n".join(texts)
    raise v.bad(where, f"'{where}' must be a string or a list of text parts")


def parse_messages(value: Any) -> list[dict[str, Any]]:
    """OpenAI chat messages -> abstractcore messages (400 naming ``messages[i].field``)."""
    if not isinstance(value, list) or not value:
        raise v.bad("messages", "'messages' must be a non-empty list")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise v.bad(where, f"'{where}' must be an object")
        role = message.get("role")
        if role not in _ROLES:
            raise v.bad(
                f"{where}.role",
                f"unknown or unsupported role {role!r} in '{where}.role' "
                f"(supported: {', '.join(_ROLES)})",
            )
        v.check_fields(message, _MESSAGE_KEYS, _MESSAGE_NEUTRAL, prefix=f"{where}.")
        item: dict[str, Any] = {
            "role": _ROLES[role],
            "content": _message_content(message.get("content"), f"{where}.content"),
        }
        name = message.get("name")
        if name is not None:
            if not isinstance(name, str):
                raise v.bad(f"{where}.name", f"'{where}.name' must be a string")
            item["name"] = name
        out.append(item)
    if all(m["role"] == "system" for m in out):
        raise v.bad("messages", "'messages' must contain at least one user or assistant message")
    return out


def parse_chat(body: Mapping[str, Any], request: Request, state: ServerState) -> ChatParams:
    """Validate a chat-completions body into provider kwargs."""
    v.check_fields(body, _CHAT_SUPPORTED, _NEUTRAL)
    max_tokens = v.opt_int(body, "max_completion_tokens", minimum=1)
    legacy = v.opt_int(body, "max_tokens", minimum=1)
    if max_tokens is None:
        max_tokens = legacy
    stream, include_usage = _stream_flags(body)
    kwargs = _common(body, request, state, max_tokens)
    kwargs["messages"] = parse_messages(body.get("messages"))
    tokens_field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    return ChatParams(kwargs, stream, include_usage, {"max_output_tokens": tokens_field})


def parse_completion(body: Mapping[str, Any], request: Request, state: ServerState) -> ChatParams:
    """Validate a (legacy) completions body; the prompt becomes one user turn."""
    v.check_fields(body, _COMPLETION_SUPPORTED, _COMPLETION_NEUTRAL)
    best_of = v.opt_int(body, "best_of", minimum=1)
    if best_of is not None and best_of > 1:
        raise v.bad("best_of", "'best_of' > 1 is not supported")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise v.bad(
            "prompt",
            "'prompt' must be a non-empty string (token arrays and batches are not supported)",
        )
    max_tokens = v.opt_int(body, "max_tokens", minimum=1)
    stream, include_usage = _stream_flags(body)
    kwargs = _common(body, request, state, 16 if max_tokens is None else max_tokens)
    kwargs["prompt"] = prompt
    return ChatParams(kwargs, stream, include_usage, COMPLETION_FIELDS)


# ---------------------------------------------------------------------- responses
def finish_reason(reason: FinishReason | None) -> str | None:
    """abstractcore finish reason -> OpenAI's (``cancelled`` never reaches a client)."""
    return None if reason is None else ("stop" if reason == "cancelled" else reason)


def usage_json(usage: Usage | None) -> dict[str, Any]:
    """OpenAI usage, with prompt-cache reuse in ``prompt_tokens_details.cached_tokens``."""
    u = usage or Usage()
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


def chat_json(resp: GenerateResponse, rid: str, model: str, created: int) -> dict[str, Any]:
    """A ``chat.completion`` object."""
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": resp.content, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason(resp.finish_reason),
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


class _Chunker:
    """Builds the stream chunks of one response (chat or text completion)."""

    def __init__(self, chat: bool, rid: str, model: str, created: int) -> None:
        self.chat = chat
        self.base = {
            "id": rid,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": None,
        }

    def choice(self, text: str | None, reason: str | None, *, role: bool = False) -> bytes:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": reason,
            }
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}
        return sse_data({**self.base, "choices": [choice]})

    def usage(self, usage: Usage | None) -> bytes:
        return sse_data({**self.base, "choices": [], "usage": usage_json(usage)})


async def _events(
    run: StreamRun,
    first: StreamChunk | Any,
    chunker: _Chunker,
    include_usage: bool,
    keepalive: float,
) -> AsyncIterator[bytes]:
    if chunker.chat:
        yield chunker.choice("", None, role=True)
    item: StreamChunk | Any = first
    reason: str | None = None
    try:
        while item is not None:
            if item is KEEPALIVE:
                yield sse_comment("keep-alive")
            else:
                assert isinstance(item, StreamChunk)
                if item.content:
                    yield chunker.choice(item.content, None)
                if item.finish_reason is not None:
                    reason = finish_reason(item.finish_reason)
            item = await run.next(keepalive)
    except Exception as exc:  # noqa: BLE001 - the status is sent: report it in the stream
        err = run.fail(exc)
        yield sse_data(openai_error_body(err))
        return
    yield chunker.choice(None if chunker.chat else "", reason or "stop")
    if include_usage:
        yield chunker.usage(run.usage)
    run.status = 200
    yield sse_data("[DONE]")


# ---------------------------------------------------------------------- endpoints
async def _answer(request: Request, state: ServerState, started: float, *, chat: bool) -> Response:
    body = await state.read_json(request)
    model = state.check_model(body.get("model"))
    params = (parse_chat if chat else parse_completion)(body, request, state)
    endpoint = "chat_completions" if chat else "completions"
    names = params.field_names
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    created = int(time.time())
    if params.stream:
        run = open_stream(state, endpoint, params.kwargs, started=started, field_names=names)
        keepalive = state.settings.keepalive_interval
        first = await run.first(keepalive)
        chunker = _Chunker(chat, rid, model, created)
        return EventStreamResponse(
            _events(run, first, chunker, params.include_usage, keepalive), on_close=run.close
        )
    resp = await generate(
        state, endpoint, params.kwargs, receive=request.receive, started=started, field_names=names
    )
    return JSONResponse((chat_json if chat else completion_json)(resp, rid, model, created))


async def chat_completions(request: Request, state: ServerState, started: float) -> Response:
    """POST /v1/chat/completions."""
    return await _answer(request, state, started, chat=True)


async def completions(request: Request, state: ServerState, started: float) -> Response:
    """POST /v1/completions."""
    return await _answer(request, state, started, chat=False)


async def list_models(request: Request, state: ServerState, started: float) -> Response:
    """GET /v1/models: the served model and its aliases."""
    state.require_provider()
    data = [
        {"id": mid, "object": "model", "created": state.created, "owned_by": "abstractcore"}
        for mid in state.model_ids()
    ]
    return JSONResponse({"object": "list", "data": data})
