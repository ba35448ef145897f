"""OpenAI Chat Completions, and every server that speaks it (LM Studio, vLLM, llama.cpp, mlx-lm).

:class:`OpenAIWire` is the wire format, written once; the provider classes only resolve their
settings (base URL, API key) and hand the wire to the shared HTTP shell. Tools, structured
output and logprobs are mapped in :mod:`.openai_tools`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import httpx

from ..errors import ConfigurationError, InvalidRequestError, ProviderAPIError
from ..request import GenerationRequest
from ..types import FinishReason, GenerateResponse, StreamChunk, Usage
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
from .openai_tools import (
    ToolDeltaReader,
    logprobs_of,
    message_json,
    request_fields,
    tool_calls_of,
)

__all__ = [
    "LMStudioProvider",
    "LocalServerProvider",
    "OpenAICompatibleProvider",
    "OpenAIProvider",
    "OpenAIWire",
]

OPENAI_BASE_URL = "https://api.openai.com/v1"
LMSTUDIO_BASE_URL = "http://localhost:1234/v1"

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "stop",
}


class OpenAIWire:
    """Chat Completions request/response mapping (pure: no I/O)."""

    path = "/chat/completions"
    stream_format: StreamFormat = "sse"

    def __init__(
        self,
        model: str,
        provider: str,
        api_key: str | None,
        *,
        max_tokens_field: str = "max_tokens",
        supports_top_k: bool = True,
    ) -> None:
        self.model = model
        self.provider = provider
        self._api_key = api_key
        self._max_tokens_field = max_tokens_field
        self._supports_top_k = supports_top_k

    def headers(self) -> dict[str, str]:
        """Bearer authentication when a key is set."""
        return {"authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def build_body(self, request: GenerationRequest, *, stream: bool) -> dict[str, Any]:
        """The /chat/completions JSON body."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [message_json(m) for m in request.messages],
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if request.max_output_tokens is not None:
            body[self._max_tokens_field] = request.max_output_tokens
        if request.top_k is not None:
            if not self._supports_top_k:
                raise InvalidRequestError(
                    f"top_k is not supported by the {self.provider} API", field="top_k"
                )
            body["top_k"] = request.top_k
        optional = {
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
            "stop": request.stop or None,
            "prompt_cache_key": request.prompt_cache_key,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        body.update(request_fields(request))
        body.update(request.extra.get("extra_body") or {})
        return body

    def parse_response(
        self, payload: dict[str, Any], request: GenerationRequest
    ) -> GenerateResponse:
        """Map a chat.completion object."""
        if "error" in payload:
            raise error_from_info(self.provider, self.error_info(payload), body=payload)
        choice = _first_choice(payload)
        message = choice["message"]
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise TypeError("message.content is not a string")
        return GenerateResponse(
            content=content,
            finish_reason=_finish(choice.get("finish_reason")) or "stop",
            usage=_usage(payload.get("usage")),
            model=payload.get("model") or self.model,
            provider=self.provider,
            tool_calls=tool_calls_of(message.get("tool_calls")),
            logprobs=logprobs_of(choice.get("logprobs")),
            raw=payload,
        )

    def stream_parser(self, request: GenerationRequest) -> StreamParser:
        """A parser for one chat.completion.chunk stream."""
        return _OpenAIStream(self)

    def error_info(self, body: Any) -> ErrorInfo:
        """OpenAI's ``{"error": {message, type, param, code}}`` (and the plain shapes of clones)."""
        err = body.get("error", body) if isinstance(body, dict) else body
        if isinstance(err, str):
            return ErrorInfo(message=err)
        if not isinstance(err, dict):
            return ErrorInfo(message=str(err)[:500])
        code = err.get("code")
        etype = err.get("type")
        code_s = str(code) if code is not None else None
        return ErrorInfo(
            message=str(err.get("message") or err.get("detail") or ""),
            code=code_s,
            type=str(etype) if etype is not None else None,
            param=err.get("param") if isinstance(err.get("param"), str) else None,
            context_overflow=code_s == "context_length_exceeded",
            status_hint=_status_hint(code, etype),
        )


class _OpenAIStream:
    """Chunks from ``data:`` events; ``[DONE]`` ends the stream and releases the final chunk."""

    def __init__(self, wire: OpenAIWire) -> None:
        self._wire = wire
        self._model = wire.model
        self._finish: FinishReason | None = None
        self._usage: Usage | None = None
        self._tools = ToolDeltaReader()
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, event: WireEvent) -> list[StreamChunk]:
        if self._done:
            return []
        if event.data.strip() == "[DONE]":
            return [self._final()]
        provider = self._wire.provider
        payload = json_object(event.data, provider, "stream event")
        if "error" in payload:
            raise error_from_info(provider, self._wire.error_info(payload), body=payload)
        self._model = payload.get("model") or self._model
        if payload.get("usage"):
            self._usage = _usage(payload["usage"])
        out: list[StreamChunk] = []
        for choice in payload.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text is not None and not isinstance(text, str):
                raise TypeError("delta.content is not a string")
            calls = self._tools.read(delta.get("tool_calls"))
            logprobs = logprobs_of(choice.get("logprobs"))
            if text or calls or logprobs:
                out.append(
                    StreamChunk(
                        content=text or "",
                        tool_call_deltas=calls,
                        logprobs=logprobs,
                        model=self._model,
                        provider=provider,
                        raw=payload,
                    )
                )
            finish = _finish(choice.get("finish_reason"))
            if finish is not None:
                self._finish = finish
        return out

    def _final(self) -> StreamChunk:
        self._done = True
        if self._finish is None:
            raise ProviderAPIError(
                f"{self._wire.provider}: stream ended with [DONE] but no finish_reason",
                provider=self._wire.provider,
            )
        return StreamChunk(
            finish_reason=self._finish,
            usage=self._usage or Usage(reported=False),
            model=self._model,
            provider=self._wire.provider,
        )


def _status_hint(code: Any, etype: Any) -> int | None:
    # vLLM and other clones put the HTTP status in "code"; OpenAI marks 5xx as "server_error".
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600:
        return code
    return 500 if etype == "server_error" else None


def _first_choice(payload: dict[str, Any]) -> dict[str, Any]:
    choices = payload["choices"]
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("choices is empty or not a list of objects")
    return choices[0]


def _finish(value: Any) -> FinishReason | None:
    if value is None:
        return None
    return _FINISH.get(str(value), "stop")


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage(reported=False)
    details = raw.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
        cached_tokens=int(details.get("cached_tokens") or 0),
    )


# ---------------------------------------------------------------------- providers
class _OpenAIFamily(HTTPProvider):
    """Common constructor for the Chat Completions providers."""

    features: ClassVar[Features] = Features(
        tools=True, parallel_tool_calls=True, structured_output=True, logprobs=True
    )

    max_tokens_field: ClassVar[str] = "max_tokens"
    supports_top_k: ClassVar[bool] = True
    #: The wire format (a server with fields of its own subclasses it: llamacpp.py).
    wire_class: ClassVar[type[OpenAIWire]] = OpenAIWire

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key: str | None,
        timeout: float | httpx.Timeout | None,
        max_retries: int,
        **defaults: Any,
    ) -> None:
        super().__init__(
            model, base_url=base_url, timeout=timeout, max_retries=max_retries, **defaults
        )
        self._wire = self.wire_class(
            model,
            self.provider_name,
            api_key,
            max_tokens_field=self.max_tokens_field,
            supports_top_k=self.supports_top_k,
        )


class OpenAIProvider(_OpenAIFamily):
    """api.openai.com (or ``OPENAI_BASE_URL``); needs ``api_key`` or ``OPENAI_API_KEY``."""

    provider_name: ClassVar[str] = "openai"
    max_tokens_field: ClassVar[str] = "max_completion_tokens"
    supports_top_k: ClassVar[bool] = False

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
        key = api_key or env_setting("OPENAI_API_KEY")
        if not key:
            raise ConfigurationError(
                "OpenAI needs an API key: pass api_key=... to create_llm() or set OPENAI_API_KEY",
                setting="api_key",
            )
        super().__init__(
            model,
            base_url=base_url or env_setting("OPENAI_BASE_URL") or OPENAI_BASE_URL,
            api_key=key,
            timeout=timeout,
            max_retries=max_retries,
            **defaults,
        )


class OpenAICompatibleProvider(_OpenAIFamily):
    """Any server speaking Chat Completions at ``base_url`` (ends in /v1); the key is optional."""

    provider_name: ClassVar[str] = "openai-compatible"

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
        if not base_url:
            raise ConfigurationError(
                "openai-compatible needs base_url=... (e.g. http://127.0.0.1:8080/v1), "
                "as an argument or in a profile",
                setting="base_url",
            )
        super().__init__(
            model,
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            **defaults,
        )


class LocalServerProvider(_OpenAIFamily):
    """A local Chat Completions server with a known default address; no key needed.
    Subclasses name the default and the environment variables that override it."""

    default_base_url: ClassVar[str]
    base_url_env: ClassVar[str | None] = None
    api_key_env: ClassVar[str | None] = None

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
        env_url = env_setting(self.base_url_env) if self.base_url_env else None
        env_key = env_setting(self.api_key_env) if self.api_key_env else None
        super().__init__(
            model,
            base_url=base_url or env_url or self.default_base_url,
            api_key=api_key or env_key,
            timeout=timeout,
            max_retries=max_retries,
            **defaults,
        )


class LMStudioProvider(LocalServerProvider):
    """LM Studio's local server (default http://localhost:1234/v1); no key needed."""

    provider_name: ClassVar[str] = "lmstudio"
    default_base_url: ClassVar[str] = LMSTUDIO_BASE_URL
