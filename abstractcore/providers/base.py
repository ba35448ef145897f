"""BaseProvider: the contract every provider implements.

The public verbs (``generate``, ``agenerate``, ``stream``, ``astream``) validate their
arguments once, here, into a :class:`GenerationRequest`; providers implement only the
transport hooks (``_stream``/``_astream`` and optionally ``_generate``/``_agenerate``).
Validation happens when a verb is called, not when its iterator is first advanced, so a bad
argument fails at the call site for streams too.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar

from pydantic import ValidationError
from typing_extensions import Self

from ..errors import InvalidRequestError, ProviderAPIError
from ..types import (
    FinishReason,
    GenerateResponse,
    GenerationRequest,
    Message,
    StreamChunk,
    Timing,
    ToolCall,
    Usage,
)

__all__ = ["BaseProvider", "MessageInput", "StreamCollector"]

MessageInput = Message | Mapping[str, Any]

# Per-call parameters a provider instance may also hold as defaults
# (create_llm(..., temperature=0)).
_DEFAULTABLE = (
    "max_output_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "prompt_cache_key",
    "timeout",
)


class BaseProvider(ABC):
    """One model on one backend, with the same four verbs for every backend."""

    provider_name: ClassVar[str] = "base"
    # Extra keyword arguments a provider accepts beyond the common ones (e.g. "min_p" for MLX,
    # "extra_body" for HTTP providers). Anything else is rejected, so a typo such as
    # ``temprature=0.3`` fails loudly instead of being silently ignored or sent on the wire.
    extra_options: ClassVar[frozenset[str]] = frozenset()
    # Model used when create_llm() is given none (e.g. the embedded MLX model); None = required.
    default_model: ClassVar[str | None] = None

    def __init__(self, model: str, **defaults: Any) -> None:
        if not isinstance(model, str) or not model.strip():
            raise InvalidRequestError("model must be a non-empty string", field="model")
        unknown = sorted(set(defaults) - set(_DEFAULTABLE))
        if unknown:
            raise InvalidRequestError(
                f"unknown option(s) for provider {self.provider_name!r}: {', '.join(unknown)}",
                field=unknown[0],
            )
        self.model = model
        # Validate defaults now so a bad create_llm(temperature=-1) fails at construction.
        self.defaults: dict[str, Any] = {k: v for k, v in defaults.items() if v is not None}
        if self.defaults:
            self.build_request("x", **{k: None for k in self.defaults})

    # ------------------------------------------------------------------ request building
    def build_request(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[MessageInput] | None = None,
        system_prompt: str | None = None,
        max_output_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        prompt_cache_key: str | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        response_model: Any = None,
        timeout: float | None = None,
        **extra: Any,
    ) -> GenerationRequest:
        """Validate the public arguments into a provider-neutral request."""
        given = {
            "max_output_tokens": max_output_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "top_k": top_k,
            "seed": seed,
            "stop": stop,
            "prompt_cache_key": prompt_cache_key,
            "timeout": timeout,
        }
        p = {k: (v if v is not None else self.defaults.get(k)) for k, v in given.items()}
        unknown = sorted(set(extra) - self.extra_options)
        if unknown:
            accepted = ", ".join(sorted(self.extra_options)) or "none"
            raise InvalidRequestError(
                f"unexpected argument(s) for provider {self.provider_name!r}: "
                f"{', '.join(unknown)} (provider-specific arguments accepted: {accepted})",
                field=unknown[0],
            )
        return GenerationRequest(
            messages=_build_messages(prompt, messages, system_prompt),
            max_output_tokens=_check_int(p["max_output_tokens"], "max_output_tokens", minimum=1),
            temperature=_check_float(p["temperature"], "temperature", minimum=0.0),
            top_p=_check_top_p(p["top_p"]),
            top_k=_check_int(p["top_k"], "top_k", minimum=0),
            seed=_check_int(p["seed"], "seed", minimum=None),
            stop=_check_stop(p["stop"]),
            prompt_cache_key=_check_key(p["prompt_cache_key"]),
            timeout=_check_float(p["timeout"], "timeout", minimum=0.0, exclusive=True),
            tools=_check_tools(tools),
            response_model=response_model,
            extra=extra,
        )

    # ------------------------------------------------------------------ public verbs
    def generate(self, prompt: str | None = None, **kwargs: Any) -> GenerateResponse:
        """Generate a complete response (blocking)."""
        return self._generate(self.build_request(prompt, **kwargs))

    async def agenerate(self, prompt: str | None = None, **kwargs: Any) -> GenerateResponse:
        """Generate a complete response without blocking the event loop."""
        return await self._agenerate(self.build_request(prompt, **kwargs))

    def stream(self, prompt: str | None = None, **kwargs: Any) -> Iterator[StreamChunk]:
        """Stream the response as chunks; the last chunk carries finish_reason and usage."""
        return self._stream(self.build_request(prompt, **kwargs))

    def astream(self, prompt: str | None = None, **kwargs: Any) -> AsyncIterator[StreamChunk]:
        """Async twin of :meth:`stream` (``async for chunk in llm.astream(...)``)."""
        return self._astream(self.build_request(prompt, **kwargs))

    # ------------------------------------------------------------------ provider hooks
    @abstractmethod
    def _stream(self, request: GenerationRequest) -> Iterator[StreamChunk]:
        """Yield the chunks of one generation."""

    @abstractmethod
    def _astream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        """Async twin of ``_stream``."""

    def _generate(self, request: GenerationRequest) -> GenerateResponse:
        collector = StreamCollector(self.model, self.provider_name)
        for chunk in self._stream(request):
            collector.add(chunk)
        return collector.result()

    async def _agenerate(self, request: GenerationRequest) -> GenerateResponse:
        collector = StreamCollector(self.model, self.provider_name)
        async for chunk in self._astream(request):
            collector.add(chunk)
        return collector.result()

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Release clients, threads and memory held by this provider."""

    async def aclose(self) -> None:
        """Async twin of :meth:`close`."""
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} model={self.model!r}>"


class StreamCollector:
    """Joins stream chunks into one GenerateResponse (shared by sync and async paths)."""

    def __init__(self, model: str, provider: str) -> None:
        self.model = model
        self.provider = provider
        self._parts: list[str] = []
        self._tool_calls: list[ToolCall] = []
        self._finish: FinishReason | None = None
        self._usage: Usage | None = None
        self._timing: Timing | None = None
        self._raw: list[Any] = []
        self._start = time.perf_counter()
        self._first: float | None = None

    def add(self, chunk: StreamChunk) -> None:
        """Record one chunk."""
        if chunk.content:
            if self._first is None:
                self._first = time.perf_counter()
            self._parts.append(chunk.content)
        self._tool_calls.extend(chunk.tool_calls)
        if chunk.model:
            self.model = chunk.model
        if chunk.raw is not None:
            self._raw.append(chunk.raw)
        if chunk.finish_reason is not None:
            self._finish = chunk.finish_reason
        if chunk.usage is not None:
            self._usage = chunk.usage
        if chunk.timing is not None:
            self._timing = chunk.timing

    def result(self) -> GenerateResponse:
        """The joined response; a stream that never finished is an error, not a success."""
        if self._finish is None:
            raise ProviderAPIError(
                "stream ended without a finish reason (truncated response)",
                provider=self.provider,
            )
        timing = self._timing or Timing(
            ttft_s=None if self._first is None else self._first - self._start,
            total_s=time.perf_counter() - self._start,
        )
        return GenerateResponse(
            content="".join(self._parts),
            finish_reason=self._finish,
            usage=self._usage or Usage(),
            timing=timing,
            model=self.model,
            provider=self.provider,
            tool_calls=self._tool_calls,
            raw=self._raw or None,
        )


# ---------------------------------------------------------------------- validation helpers
def _build_messages(
    prompt: str | None,
    messages: Sequence[MessageInput] | None,
    system_prompt: str | None,
) -> list[Message]:
    if (prompt is None) == (messages is None):
        raise InvalidRequestError(
            "pass exactly one of prompt or messages",
            field="prompt" if prompt is None else "messages",
        )
    out: list[Message] = []
    if system_prompt is not None:
        if not isinstance(system_prompt, str):
            raise InvalidRequestError("system_prompt must be a string", field="system_prompt")
        out.append(Message(role="system", content=system_prompt))
    if prompt is not None:
        if not isinstance(prompt, str):
            raise InvalidRequestError(
                f"prompt must be a string, got {type(prompt).__name__}", field="prompt"
            )
        if not prompt:
            raise InvalidRequestError("prompt must not be empty", field="prompt")
        out.append(Message(role="user", content=prompt))
        return out
    assert messages is not None
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InvalidRequestError("messages must be a list of messages", field="messages")
    if not messages:
        raise InvalidRequestError("messages must not be empty", field="messages")
    for i, m in enumerate(messages):
        try:
            out.append(m if isinstance(m, Message) else Message.model_validate(dict(m)))
        except (ValidationError, TypeError, ValueError) as exc:
            loc = ""
            if isinstance(exc, ValidationError) and exc.errors():
                loc = "." + ".".join(str(x) for x in exc.errors()[0]["loc"])
            raise InvalidRequestError(
                f"messages[{i}] is not a valid message: {exc}", field=f"messages[{i}]{loc}"
            ) from exc
    if all(m.role == "system" for m in out):
        raise InvalidRequestError(
            "messages must contain at least one non-system message", field="messages"
        )
    return out


def _check_int(value: Any, field: str, *, minimum: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(
            f"{field} must be an integer, got {type(value).__name__}", field=field
        )
    if minimum is not None and value < minimum:
        raise InvalidRequestError(f"{field} must be >= {minimum}, got {value}", field=field)
    return value


def _check_float(
    value: Any, field: str, *, minimum: float, exclusive: bool = False
) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(
            f"{field} must be a number, got {type(value).__name__}", field=field
        )
    v = float(value)
    if not math.isfinite(v) or v < minimum or (exclusive and v == minimum):
        op = ">" if exclusive else ">="
        raise InvalidRequestError(
            f"{field} must be finite and {op} {minimum}, got {value}", field=field
        )
    return v


def _check_top_p(value: Any) -> float | None:
    v = _check_float(value, "top_p", minimum=0.0, exclusive=True)
    if v is not None and v > 1.0:
        raise InvalidRequestError(f"top_p must be in (0, 1], got {value}", field="top_p")
    return v


def _check_stop(value: Any) -> list[str]:
    if value is None:
        return []
    items: Iterable[Any] = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise InvalidRequestError("stop must be a string or a list of strings", field="stop")
    out: list[str] = []
    for s in items:
        if not isinstance(s, str) or not s:
            raise InvalidRequestError("stop entries must be non-empty strings", field="stop")
        out.append(s)
    return out


def _check_tools(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise InvalidRequestError("tools must be a list of tool definitions", field="tools")
    for i, tool in enumerate(value):
        if not isinstance(tool, Mapping):
            raise InvalidRequestError(
                f"tools[{i}] must be a mapping, got {type(tool).__name__}", field=f"tools[{i}]"
            )
    return [dict(t) for t in value] or None


def _check_key(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(
            "prompt_cache_key must be a non-empty string", field="prompt_cache_key"
        )
    return value
