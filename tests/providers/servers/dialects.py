"""The three wire formats as a server speaks them: replies, stream frames and error bodies.

Each fake model answers ``"Echo: <last user message>"``, one word per token, so tests can
predict content, token counts and ``length`` truncation exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

# kind -> (OpenAI type, OpenAI code, Anthropic type)
_KINDS: dict[str, tuple[str, str | None, str]] = {
    "rate_limit": ("requests", "rate_limit_exceeded", "rate_limit_error"),
    "server": ("server_error", None, "api_error"),
    "auth": ("invalid_request_error", "invalid_api_key", "authentication_error"),
    "permission": (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "permission_error",
    ),
    "not_found": ("invalid_request_error", "model_not_found", "not_found_error"),
    "bad_request": ("invalid_request_error", "invalid_value", "invalid_request_error"),
    "context": ("invalid_request_error", "context_length_exceeded", "invalid_request_error"),
    "overloaded": ("server_error", None, "overloaded_error"),
}


@dataclass
class Reply:
    """What the fake model answers for one request."""

    model: str
    pieces: list[str]
    finish: str  # "stop" | "length"
    prompt_tokens: int
    cached_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces)


def make_reply(
    model: str, texts: list[str], last_user: str, limit: int | None, cached: int
) -> Reply:
    """Echo the last user message, cut at ``limit`` tokens."""
    words = f"Echo: {last_user}".split(" ")
    pieces = [words[0]] + [" " + w for w in words[1:]]
    finish = "stop"
    if limit is not None and limit < len(pieces):
        pieces, finish = pieces[:limit], "length"
    prompt = sum(len(_text(t).split()) for t in texts)
    return Reply(model, pieces, finish, prompt, cached)


def _text(content: Any) -> str:
    """Message content as text (Anthropic content may be a list of blocks)."""
    if isinstance(content, list):
        return " ".join(str(b.get("text") or b.get("content") or "") for b in content)
    return str(content)


class Dialect(Protocol):
    """One API as seen from the server."""

    name: str
    path: str
    stream_type: str
    overloaded_status: int
    first_content_frame: int

    def reply(self, body: dict[str, Any], cached: int) -> Reply: ...
    def is_stream(self, body: dict[str, Any]) -> bool: ...
    def full(self, reply: Reply) -> dict[str, Any]: ...
    def frames(self, reply: Reply, body: dict[str, Any]) -> list[bytes]: ...
    def error(self, kind: str, message: str) -> dict[str, Any]: ...
    def error_frame(self, kind: str, message: str) -> bytes: ...
    def garbage_frame(self) -> bytes: ...
    def wrong_shape_frame(self) -> bytes: ...


def _sse(data: Any, event: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


class OpenAIDialect:
    """Chat Completions."""

    name = "openai"
    first_content_frame = 1
    path = "/openai/v1/chat/completions"
    stream_type = "text/event-stream"
    overloaded_status = 503

    def is_stream(self, body: dict[str, Any]) -> bool:
        return bool(body.get("stream"))

    def reply(self, body: dict[str, Any], cached: int) -> Reply:
        msgs = body["messages"]
        last = [m["content"] for m in msgs if m["role"] == "user"][-1]
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        return make_reply(body["model"], [m["content"] for m in msgs], last, limit, cached)

    def _usage(self, r: Reply) -> dict[str, Any]:
        return {
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": r.cached_tokens},
        }

    def full(self, r: Reply) -> dict[str, Any]:
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": r.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": r.text},
                    "finish_reason": r.finish,
                }
            ],
            "usage": self._usage(r),
        }

    def _chunk(self, r: Reply, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": r.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def frames(self, r: Reply, body: dict[str, Any]) -> list[bytes]:
        out = [_sse(self._chunk(r, {"role": "assistant", "content": ""}, None))]
        out += [_sse(self._chunk(r, {"content": p}, None)) for p in r.pieces]
        out.append(_sse(self._chunk(r, {}, r.finish)))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": r.model}
            out.append(_sse({**usage, "choices": [], "usage": self._usage(r)}))
        out.append(_sse("[DONE]"))
        return out

    def error(self, kind: str, message: str) -> dict[str, Any]:
        etype, code, _ = _KINDS[kind]
        param = (
            "temperature" if kind == "bad_request" else ("messages" if kind == "context" else None)
        )
        return {"error": {"message": message, "type": etype, "param": param, "code": code}}

    def error_frame(self, kind: str, message: str) -> bytes:
        return _sse(self.error(kind, message))

    def garbage_frame(self) -> bytes:
        return b'data: {"choices": [{"delta": {"content": "x"\n\n'

    def wrong_shape_frame(self) -> bytes:
        return _sse({"choices": "not-a-list"})


class AnthropicDialect:
    """Messages API."""

    name = "anthropic"
    first_content_frame = 3
    path = "/anthropic/v1/messages"
    stream_type = "text/event-stream"
    overloaded_status = 529

    def is_stream(self, body: dict[str, Any]) -> bool:
        return bool(body.get("stream"))

    def reply(self, body: dict[str, Any], cached: int) -> Reply:
        msgs = body["messages"]
        texts = [m["content"] for m in msgs] + ([body["system"]] if "system" in body else [])
        last = [m["content"] for m in msgs if m["role"] == "user"][-1]
        return make_reply(body["model"], texts, last, body["max_tokens"], cached)

    def _stop(self, r: Reply) -> str:
        return "end_turn" if r.finish == "stop" else "max_tokens"

    def full(self, r: Reply) -> dict[str, Any]:
        return {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": r.model,
            "content": [{"type": "text", "text": r.text}],
            "stop_reason": self._stop(r),
            "stop_sequence": None,
            "usage": {
                "input_tokens": r.prompt_tokens - r.cached_tokens,
                "output_tokens": r.completion_tokens,
                "cache_read_input_tokens": r.cached_tokens,
                "cache_creation_input_tokens": 0,
            },
        }

    def frames(self, r: Reply, body: dict[str, Any]) -> list[bytes]:
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": r.model,
                "content": [],
                "stop_reason": None,
                "usage": {
                    "input_tokens": r.prompt_tokens - r.cached_tokens,
                    "output_tokens": 1,
                    "cache_read_input_tokens": r.cached_tokens,
                    "cache_creation_input_tokens": 0,
                },
            },
        }
        out = [
            _sse(start, "message_start"),
            _sse(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
                "content_block_start",
            ),
            _sse({"type": "ping"}, "ping"),
        ]
        for p in r.pieces:
            delta = {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": p},
            }
            out.append(_sse(delta, "content_block_delta"))
        out.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
        end = {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop(r), "stop_sequence": None},
            "usage": {"output_tokens": r.completion_tokens},
        }
        out.append(_sse(end, "message_delta"))
        out.append(_sse({"type": "message_stop"}, "message_stop"))
        return out

    def error(self, kind: str, message: str) -> dict[str, Any]:
        if kind == "context":
            message = "prompt is too long: 210000 tokens > 200000 maximum"
        return {"type": "error", "error": {"type": _KINDS[kind][2], "message": message}}

    def error_frame(self, kind: str, message: str) -> bytes:
        return _sse(self.error(kind, message), "error")

    def garbage_frame(self) -> bytes:
        return b'event: content_block_delta\ndata: {"type": "content_block_delta", "delta"\n\n'

    def wrong_shape_frame(self) -> bytes:
        return _sse({"type": "content_block_delta", "delta": None}, "content_block_delta")


class OllamaDialect:
    """/api/chat with NDJSON streaming."""

    name = "ollama"
    first_content_frame = 0
    path = "/ollama/api/chat"
    stream_type = "application/x-ndjson"
    overloaded_status = 503

    def is_stream(self, body: dict[str, Any]) -> bool:
        return body.get("stream", True) is not False

    def reply(self, body: dict[str, Any], cached: int) -> Reply:
        msgs = body["messages"]
        last = [m["content"] for m in msgs if m["role"] == "user"][-1]
        limit = (body.get("options") or {}).get("num_predict")
        return make_reply(body["model"], [m["content"] for m in msgs], last, limit, 0)

    def _done(self, r: Reply, content: str) -> dict[str, Any]:
        return {
            "model": r.model,
            "created_at": "2025-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": content},
            "done": True,
            "done_reason": r.finish,
            "total_duration": 2_000_000,
            "prompt_eval_count": r.prompt_tokens,
            "prompt_eval_duration": 500_000,
            "eval_count": r.completion_tokens,
            "eval_duration": 1_000_000,
        }

    def full(self, r: Reply) -> dict[str, Any]:
        return self._done(r, r.text)

    def frames(self, r: Reply, body: dict[str, Any]) -> list[bytes]:
        out = []
        for p in r.pieces:
            line = {
                "model": r.model,
                "created_at": "2025-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": p},
                "done": False,
            }
            out.append(json.dumps(line).encode() + b"\n")
        out.append(json.dumps(self._done(r, "")).encode() + b"\n")
        return out

    def error(self, kind: str, message: str) -> dict[str, Any]:
        return {"error": message}

    def error_frame(self, kind: str, message: str) -> bytes:
        return json.dumps(self.error(kind, message)).encode() + b"\n"

    def garbage_frame(self) -> bytes:
        return b'{"message": {"content": "x"\n'

    def wrong_shape_frame(self) -> bytes:
        return json.dumps({"message": {"content": 42}, "done": False}).encode() + b"\n"


DIALECTS: dict[str, Dialect] = {
    d.name: d for d in (OpenAIDialect(), AnthropicDialect(), OllamaDialect())
}
