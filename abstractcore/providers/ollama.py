"""Ollama's native chat API (``POST /api/chat``, NDJSON streaming, sampling in ``options``).

:class:`OllamaWire` is the wire format, written once; :class:`OllamaProvider` resolves its
settings and hands the wire to the shared HTTP shell.
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
        body.update(request.extra.get("extra_body") or {})
        return body

    def parse_response(self, payload: dict[str, Any]) -> GenerateResponse:
        """Map the single ``done: true`` object of a non-streamed reply."""
        if "error" in payload:
            raise error_from_info(self.provider, self.error_info(payload), body=payload)
        if payload.get("done") is not True:
            raise ValueError("reply is not marked done")
        content = payload["message"]["content"]
        if not isinstance(content, str):
            raise TypeError("message.content is not a string")
        return GenerateResponse(
            content=content,
            finish_reason=_finish(payload.get("done_reason")),
            usage=_usage(payload),
            timing=_timing(payload),
            model=payload.get("model") or self.model,
            provider=self.provider,
            raw=payload,
        )

    def stream_parser(self) -> StreamParser:
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
        text = (payload.get("message") or {}).get("content")
        if text:
            if not isinstance(text, str):
                raise TypeError("message.content is not a string")
            out.append(StreamChunk(content=text, model=model, provider=provider, raw=payload))
        if payload.get("done") is True:
            self._done = True
            out.append(
                StreamChunk(
                    finish_reason=_finish(payload.get("done_reason")),
                    usage=_usage(payload),
                    timing=_timing(payload),
                    model=model,
                    provider=provider,
                )
            )
        return out


def _message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.name is not None and m.role == "tool":
        out["tool_name"] = m.name
    return out


def _finish(value: Any) -> FinishReason:
    return _FINISH.get(str(value), "stop")


def _usage(payload: dict[str, Any]) -> Usage:
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
