"""Ollama's native chat API (``POST /api/chat``, NDJSON streaming, sampling in ``options``).

:class:`OllamaWire` is the wire format, written once; :class:`OllamaProvider` resolves its
settings and hands the wire to the shared HTTP shell. Tools are OpenAI-shaped but their
arguments are JSON objects, never text, and a streamed call arrives whole in one line;
structured output is ``format`` (``"json"`` or a schema); logprobs are top-level fields.
"""

from __future__ import annotations

from typing import Any, ClassVar

import httpx

from ..request import GenerationRequest
from ..types import (
    FinishReason,
    GenerateResponse,
    Message,
    StreamChunk,
    Timing,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    Usage,
)
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
from .features import Features

# Ollama's message.tool_calls have OpenAI's shape (arguments as an object, ids optional),
# which the Chat Completions reader accepts as it accepts them from compatible servers.
from .openai_tools import tool_calls_of

__all__ = ["OLLAMA_BASE_URL", "OllamaProvider", "OllamaWire"]

OLLAMA_BASE_URL = "http://localhost:11434"

_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length"}


class OllamaWire:
    """/api/chat request/response mapping (pure: no I/O)."""

    path = "/api/chat"
    stream_format: StreamFormat = "ndjson"

    def __init__(self, model: str, provider: str, api_key: str | None = None) -> None:
        self.model = model
        self.provider = provider
        self._api_key = api_key

    def headers(self) -> dict[str, str]:
        """A local Ollama needs none; one behind an authenticating proxy takes a bearer key."""
        return {"authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def build_body(self, request: GenerationRequest, *, stream: bool) -> dict[str, Any]:
        """The /api/chat JSON body; ``stream`` is always explicit (the API defaults to true)."""
        options = {
            "temperature": request.temperature,
            "top_p": request.top_p,
            "top_k": request.top_k,
            "seed": request.seed,
            "stop": request.stop or None,
            "num_predict": request.max_output_tokens,
        }
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [_message(m) for m in request.messages],
            "stream": stream,
        }
        chosen = {k: v for k, v in options.items() if v is not None}
        if chosen:
            body["options"] = chosen
        # The API has no tool_choice: "none" is honoured by not offering the tools at all.
        if request.tools and request.tool_choice != "none":
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in request.tools
            ]
        fmt = request.response_format
        if fmt is not None:
            body["format"] = "json" if fmt.kind == "json_object" else fmt.json_schema
        if request.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = request.top_logprobs or 0
        body.update(request.extra.get("extra_body") or {})
        return body

    def parse_response(
        self, payload: dict[str, Any], request: GenerationRequest
    ) -> GenerateResponse:
        """Map the single ``done: true`` object of a non-streamed reply."""
        if "error" in payload:
            raise error_from_info(self.provider, self.error_info(payload), body=payload)
        if payload.get("done") is not True:
            raise ValueError("reply is not marked done")
        message = payload["message"]
        content = message["content"]
        if not isinstance(content, str):
            raise TypeError("message.content is not a string")
        calls = tool_calls_of(message.get("tool_calls"))
        return GenerateResponse(
            content=content,
            finish_reason=_finish(payload.get("done_reason"), bool(calls)),
            usage=_usage(payload),
            timing=_timing(payload),
            model=payload.get("model") or self.model,
            provider=self.provider,
            tool_calls=calls,
            logprobs=_logprobs(payload.get("logprobs")),
            raw=payload,
        )

    def stream_parser(self, request: GenerationRequest) -> StreamParser:
        """A parser for one NDJSON reply."""
        return _OllamaStream(self)

    def error_info(self, body: Any) -> ErrorInfo:
        """Ollama's errors are ``{"error": "text"}``; the status code carries the meaning."""
        err = body.get("error", body) if isinstance(body, dict) else body
        # Client errors come back as HTTP statuses before a stream starts; an error line inside
        # a stream is the server failing, so it stands for a 500.
        return ErrorInfo(message=str(err)[:500], status_hint=500)


class _OllamaStream:
    """One JSON object per line; the one with ``done: true`` ends the stream."""

    def __init__(self, wire: OllamaWire) -> None:
        self._wire = wire
        self._calls = 0  # calls seen so far: the next one's index
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, event: WireEvent) -> list[StreamChunk]:
        if self._done:
            return []
        provider = self._wire.provider
        payload = json_object(event.data, provider, "stream line")
        if "error" in payload:
            raise error_from_info(provider, self._wire.error_info(payload), body=payload)
        model = payload.get("model") or self._wire.model
        out: list[StreamChunk] = []
        message = payload.get("message") or {}
        text = message.get("content")
        if text is not None and not isinstance(text, str):
            raise TypeError("message.content is not a string")
        deltas = self._deltas(tool_calls_of(message.get("tool_calls")))
        logprobs = _logprobs(payload.get("logprobs"))
        if text or deltas or logprobs:
            out.append(
                StreamChunk(
                    content=text or "",
                    tool_call_deltas=deltas,
                    logprobs=logprobs,
                    model=model,
                    provider=provider,
                    raw=payload,
                )
            )
        if payload.get("done") is True:
            self._done = True
            out.append(
                StreamChunk(
                    finish_reason=_finish(payload.get("done_reason"), self._calls > 0),
                    usage=_usage(payload),
                    timing=_timing(payload),
                    model=model,
                    provider=provider,
                )
            )
        return out

    def _deltas(self, calls: list[ToolCall]) -> list[ToolCallDelta]:
        # Each call comes whole: one delta with its id, name and all of its arguments.
        out = []
        for call in calls:
            out.append(
                ToolCallDelta(
                    index=self._calls, id=call.id, name=call.name, arguments=call.raw_arguments
                )
            )
            self._calls += 1
        return out


def _message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.name is not None and m.role == "tool":
        out["tool_name"] = m.name  # Ollama matches a result to its call by the tool's name
    if m.tool_calls:
        out["tool_calls"] = [
            {"function": {"name": c.name, "arguments": c.arguments}} for c in m.tool_calls
        ]
    return out


def _logprobs(raw: Any) -> list[TokenLogprob] | None:
    """Top-level ``logprobs``: ``[{token, logprob, bytes, top_logprobs}]`` (OpenAI's entries)."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise TypeError("logprobs is not a list")
    return [TokenLogprob.model_validate(entry) for entry in raw]


def _finish(value: Any, called_tools: bool = False) -> FinishReason:
    reason = _FINISH.get(str(value), "stop")
    # Ollama ends a turn that called tools with done_reason "stop"; callers expect tool_calls.
    return "tool_calls" if called_tools and reason == "stop" else reason


def _usage(payload: dict[str, Any]) -> Usage:
    if "prompt_eval_count" not in payload and "eval_count" not in payload:
        return Usage(reported=False)
    return Usage(
        prompt_tokens=int(payload.get("prompt_eval_count") or 0),
        completion_tokens=int(payload.get("eval_count") or 0),
    )


def _timing(payload: dict[str, Any]) -> Timing:
    count = payload.get("eval_count")
    duration_ns = payload.get("eval_duration")
    if isinstance(count, int) and isinstance(duration_ns, (int, float)) and duration_ns > 0:
        return Timing(decode_tokens_per_s=count / (duration_ns / 1e9))
    return Timing()


def _host_url(host: str) -> str:
    """``OLLAMA_HOST`` may be ``host:port`` without a scheme, as Ollama itself accepts."""
    if "://" not in host:
        host = f"http://{host}"
    url = httpx.URL(host)
    if url.port is None and url.scheme == "http":
        url = url.copy_with(port=11434)
    return str(url)


class OllamaProvider(HTTPProvider):
    """A local or remote Ollama server (default http://localhost:11434, or ``OLLAMA_HOST``)."""

    provider_name: ClassVar[str] = "ollama"
    # /api/chat has no tool_choice and no switch for parallel calls.
    features: ClassVar[Features] = Features(
        tools=True,
        tool_choice=frozenset({"auto", "none"}),
        structured_output=True,
        logprobs=True,
        why="Ollama's /api/chat has no such option",
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
        host = env_setting("OLLAMA_HOST")
        super().__init__(
            model,
            base_url=base_url or (_host_url(host) if host else OLLAMA_BASE_URL),
            timeout=timeout,
            max_retries=max_retries,
            **defaults,
        )
        self._wire = OllamaWire(model, self.provider_name, api_key)
