"""Anthropic Messages API (``POST /v1/messages``, SSE streaming).

:class:`AnthropicWire` is the wire format, written once; :class:`AnthropicProvider` resolves
its settings and hands the wire to the shared HTTP shell. Tools, tool results and structured
output (a forced tool call) are mapped in :mod:`.anthropic_tools`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import httpx

from ..errors import ConfigurationError, ProviderAPIError
from ..request import GenerationRequest
from ..types import FinishReason, GenerateResponse, StreamChunk, ToolCallDelta, Usage
from ._http import (
    ErrorInfo,
    StreamFormat,
    StreamParser,
    WireEvent,
    env_setting,
    error_from_info,
    json_object,
)
from ._http_provider import HTTPProvider
from .anthropic_tools import (
    ForcedToolStream,
    ToolBlocks,
    answer_from_forced_tool,
    check_request,
    forced_finish,
    messages_json,
    tool_call_of,
    tool_fields,
)
from .features import Features

__all__ = ["ANTHROPIC_VERSION", "DEFAULT_MAX_TOKENS", "AnthropicProvider", "AnthropicWire"]

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
"""The API requires max_tokens; this is the value sent when the caller gives none."""

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}

# The documented error types and the HTTP status each one is returned with.
_ERROR_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


class AnthropicWire:
    """Messages API request/response mapping (pure: no I/O)."""

    path = "/v1/messages"
    stream_format: StreamFormat = "sse"

    def __init__(self, model: str, provider: str, api_key: str | None) -> None:
        self.model = model
        self.provider = provider
        self._api_key = api_key

    def headers(self) -> dict[str, str]:
        """``x-api-key`` and the pinned ``anthropic-version``."""
        out = {"anthropic-version": ANTHROPIC_VERSION}
        if self._api_key:
            out["x-api-key"] = self._api_key
        return out

    def build_body(self, request: GenerationRequest, *, stream: bool) -> dict[str, Any]:
        """The /v1/messages JSON body; system turns go to the top-level ``system``."""
        system = [m.content for m in request.messages if m.role == "system"]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages_json(request.messages),
            "max_tokens": request.max_output_tokens or DEFAULT_MAX_TOKENS,
            "stream": stream,
        }
        if system:
            body["system"] = "\n\n".join(system)
        optional = {
            "temperature": request.temperature,
            "top_p": request.top_p,
            "top_k": request.top_k,
            "stop_sequences": request.stop or None,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        body.update(tool_fields(request, self.provider))
        body.update(request.extra.get("extra_body") or {})
        return body

    def parse_response(
        self, payload: dict[str, Any], request: GenerationRequest
    ) -> GenerateResponse:
        """Map a ``message`` object: text blocks joined, tool_use blocks, stop_reason, usage
        (for structured output, the forced tool's input is the content)."""
        if payload.get("type") == "error":
            raise error_from_info(self.provider, self.error_info(payload), body=payload)
        blocks = payload["content"]
        if not isinstance(blocks, list):
            raise TypeError("content is not a list")
        text = "".join(b["text"] for b in blocks if b.get("type") == "text")
        if "stop_reason" not in payload:
            raise KeyError("stop_reason")
        response = GenerateResponse(
            content=text,
            finish_reason=_finish(payload["stop_reason"]),
            usage=_usage(payload.get("usage")),
            model=payload.get("model") or self.model,
            provider=self.provider,
            tool_calls=[tool_call_of(b) for b in blocks if b.get("type") == "tool_use"],
            raw=payload,
        )
        fmt = request.response_format
        return response if fmt is None else answer_from_forced_tool(fmt, response)

    def stream_parser(self, request: GenerationRequest) -> StreamParser:
        """A parser for one Messages event stream."""
        fmt = request.response_format
        return _AnthropicStream(self, None if fmt is None else ForcedToolStream(fmt))

    def error_info(self, body: Any) -> ErrorInfo:
        """``{"type": "error", "error": {"type", "message"}}``."""
        err = body.get("error", body) if isinstance(body, dict) else body
        if not isinstance(err, dict):
            return ErrorInfo(message=str(err)[:500])
        etype = str(err.get("type") or "") or None
        message = str(err.get("message") or "")
        return ErrorInfo(
            message=message,
            type=etype,
            # The API gives overflow no code of its own; its message prefix is the only signal.
            context_overflow=etype == "invalid_request_error"
            and message.startswith("prompt is too long"),
            overloaded=etype == "overloaded_error",
            status_hint=_ERROR_STATUS.get(etype or ""),
        )


class _AnthropicStream:
    """message_start / content_block_delta / message_delta / message_stop / error events."""

    def __init__(self, wire: AnthropicWire, forced: ForcedToolStream | None) -> None:
        self._wire = wire
        self._forced = forced  # structured output: the forced tool's input is the content
        self._model = wire.model
        self._finish: FinishReason | None = None
        self._usage: dict[str, Any] = {}
        self._tools = ToolBlocks()
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, event: WireEvent) -> list[StreamChunk]:
        if self._done:
            return []
        provider = self._wire.provider
        payload = json_object(event.data, provider, "stream event")
        kind = event.name or payload.get("type")
        if kind == "error":
            raise error_from_info(provider, self._wire.error_info(payload), body=payload)
        if kind == "message_start":
            message = payload["message"]
            self._model = message.get("model") or self._model
            self._usage.update(message.get("usage") or {})
        elif kind == "content_block_start":
            return self._calls(self._tools.start(payload), payload)
        elif kind == "content_block_stop":
            return self._calls(self._tools.stop(payload), payload)
        elif kind == "content_block_delta":
            delta = payload["delta"]
            if delta.get("type") == "input_json_delta":
                return self._calls(self._tools.delta(payload), payload)
            if delta.get("type") == "text_delta" and delta["text"] and self._forced is None:
                text = delta["text"]
                if not isinstance(text, str):
                    raise TypeError("delta.text is not a string")
                return [
                    StreamChunk(content=text, model=self._model, provider=provider, raw=payload)
                ]
        elif kind == "message_delta":
            stop = (payload.get("delta") or {}).get("stop_reason")
            if stop is not None:
                self._finish = _finish(stop)
            self._usage.update(
                {k: v for k, v in (payload.get("usage") or {}).items() if v is not None}
            )
        elif kind == "message_stop":
            return [self._final()]
        return []  # ping, and future event types

    def _calls(self, deltas: list[ToolCallDelta], payload: dict[str, Any]) -> list[StreamChunk]:
        provider = self._wire.provider
        if self._forced is not None:
            text = self._forced.text(deltas)
            if not text:
                return []
            return [StreamChunk(content=text, model=self._model, provider=provider, raw=payload)]
        if not deltas:
            return []
        return [
            StreamChunk(tool_call_deltas=deltas, model=self._model, provider=provider, raw=payload)
        ]

    def _final(self) -> StreamChunk:
        self._done = True
        if self._finish is None:
            raise ProviderAPIError(
                f"{self._wire.provider}: message_stop without a stop_reason",
                provider=self._wire.provider,
            )
        finish = self._finish if self._forced is None else forced_finish(self._finish)
        return StreamChunk(
            finish_reason=finish,
            usage=_usage(self._usage),
            model=self._model,
            provider=self._wire.provider,
        )


def _finish(value: Any) -> FinishReason:
    return _FINISH.get(str(value), "stop")


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage(reported=False)
    cached = int(raw.get("cache_read_input_tokens") or 0)
    created = int(raw.get("cache_creation_input_tokens") or 0)
    # input_tokens counts only the uncached part; report the whole prompt like the others do.
    return Usage(
        prompt_tokens=int(raw.get("input_tokens") or 0) + cached + created,
        completion_tokens=int(raw.get("output_tokens") or 0),
        cached_tokens=cached,
    )


class AnthropicProvider(HTTPProvider):
    """api.anthropic.com (or ``ANTHROPIC_BASE_URL``); needs ``api_key`` or ``ANTHROPIC_API_KEY``."""

    provider_name: ClassVar[str] = "anthropic"
    # Structured output goes through a forced tool; the API returns no token probabilities.
    features: ClassVar[Features] = Features(
        tools=True,
        parallel_tool_calls=True,
        structured_output=True,
        why="the Messages API returns no token probabilities",
    )

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = 2,
        **defaults: Any,
    ) -> None:
        key = api_key or env_setting("ANTHROPIC_API_KEY")
        if not key:
            raise ConfigurationError(
                "Anthropic needs an API key: pass api_key=... to create_llm() "
                "or set ANTHROPIC_API_KEY",
                setting="api_key",
            )
        super().__init__(
            model,
            base_url=base_url or env_setting("ANTHROPIC_BASE_URL") or ANTHROPIC_BASE_URL,
            timeout=timeout,
            max_retries=max_retries,
            **defaults,
        )
        self._wire = AnthropicWire(model, self.provider_name, key)

    def build_request(self, prompt: str | None = None, **kwargs: Any) -> GenerationRequest:
        """As for every provider, plus the limits of structured output through a forced tool
        (refused at the call, before any I/O, for streams too)."""
        request = super().build_request(prompt, **kwargs)
        check_request(request, self.provider_name)
        return request
