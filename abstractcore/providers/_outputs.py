"""What happens to a backend's answer before the caller sees it, for every provider.

- :class:`StreamCollector` joins stream chunks into one GenerateResponse (tool-call deltas
  assembled, logprobs concatenated).
- :func:`checked_response` validates tool-call arguments and structured output. Written as a
  generator that yields the requests to send (the first, and at most one retry with the
  validation errors fed back) and returns the final response, so the sync and async verbs
  drive the same logic with their own I/O (:func:`drive` / :func:`adrive`).
- :class:`StreamChecker` does the same for a stream: chunks pass through, the last one gets
  the assembled, validated ``tool_calls`` and ``parsed`` (a stream cannot be retried: its
  text is already out, so invalid output raises at the end).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from ..errors import ProviderAPIError, StructuredOutputError, ToolCallError
from ..request import GenerationRequest
from ..tools.calls import ToolCallAssembler, validate_tool_calls
from ..types import (
    FinishReason,
    GenerateResponse,
    Message,
    StreamChunk,
    Timing,
    TokenLogprob,
    Usage,
)

__all__ = ["StreamChecker", "StreamCollector", "adrive", "checked_response", "drive"]

Checked = Generator[GenerationRequest, GenerateResponse, GenerateResponse]


class StreamCollector:
    """Joins stream chunks into one GenerateResponse (shared by sync and async paths)."""

    def __init__(self, model: str, provider: str) -> None:
        self.model = model
        self.provider = provider
        self._parts: list[str] = []
        self._calls = ToolCallAssembler()
        self._tool_calls: list[Any] = []
        self._logprobs: list[TokenLogprob] = []
        self._finish: FinishReason | None = None
        self._usage: Usage | None = None
        self._timing: Timing | None = None
        self._parsed: Any = None
        self._raw: list[Any] = []
        self._start = time.perf_counter()
        self._first: float | None = None

    def add(self, chunk: StreamChunk) -> None:
        """Record one chunk."""
        if chunk.content:
            if self._first is None:
                self._first = time.perf_counter()
            self._parts.append(chunk.content)
        self._calls.add(chunk.tool_call_deltas)
        if chunk.tool_calls:  # a finished stream's assembled calls win over its deltas
            self._tool_calls = list(chunk.tool_calls)
        if chunk.logprobs:
            self._logprobs.extend(chunk.logprobs)
        if chunk.parsed is not None:
            self._parsed = chunk.parsed
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

    @property
    def text(self) -> str:
        """The text so far."""
        return "".join(self._parts)

    def tool_calls(self) -> list[Any]:
        """The calls so far: assembled ones, or those the stream gave whole."""
        return self._tool_calls or self._calls.calls(self.provider)

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
            content=self.text,
            finish_reason=self._finish,
            usage=self._usage or Usage(reported=False),
            timing=timing,
            model=self.model,
            provider=self.provider,
            tool_calls=self.tool_calls(),
            parsed=self._parsed,
            logprobs=self._logprobs or None,
            raw=self._raw or None,
        )


# ---------------------------------------------------------------------- whole responses
def checked_response(request: GenerationRequest) -> Checked:
    """Yields the request to send (and at most one structured-output retry); returns the
    response with validated ``tool_calls`` and ``parsed``."""
    response = yield request
    response = _with_tool_calls(request, response)
    fmt = request.response_format
    if fmt is None or response.tool_calls:
        return response
    try:
        return response.model_copy(update={"parsed": fmt.parse(response.content)})
    except ValueError as exc:
        first_error = str(exc)
    if response.finish_reason == "length":  # the same limit would cut a retry off too
        raise _structured_error(response, first_error, retried=False)
    retry = request.model_copy(
        update={"messages": [*request.messages, *_retry_turns(response.content, first_error)]}
    )
    second = yield retry
    second = _with_tool_calls(request, second)
    total = second.model_copy(update={"usage": response.usage + second.usage})
    if second.tool_calls:
        return total
    try:
        return total.model_copy(update={"parsed": fmt.parse(second.content)})
    except ValueError as exc:
        raise _structured_error(total, str(exc), retried=True) from None


def drive(
    checked: Checked, send: Callable[[GenerationRequest], GenerateResponse]
) -> GenerateResponse:
    """Run ``checked`` with a blocking ``send``."""
    request = next(checked)
    try:
        while True:
            request = checked.send(send(request))
    except StopIteration as stop:
        result: GenerateResponse = stop.value
        return result


async def adrive(
    checked: Checked, send: Callable[[GenerationRequest], Awaitable[GenerateResponse]]
) -> GenerateResponse:
    """Run ``checked`` with an async ``send``."""
    request = next(checked)
    try:
        while True:
            request = checked.send(await send(request))
    except StopIteration as stop:
        result: GenerateResponse = stop.value
        return result


def _with_tool_calls(request: GenerationRequest, response: GenerateResponse) -> GenerateResponse:
    if not response.tool_calls:
        return response
    try:
        calls = validate_tool_calls(response.tool_calls, request.tools)
    except ToolCallError as exc:
        exc.response = response
        raise
    return response.model_copy(update={"tool_calls": calls})


def _retry_turns(raw: str, errors: str) -> list[Message]:
    return [
        Message(role="assistant", content=raw),
        Message(
            role="user",
            content=(
                f"That reply does not match the required JSON schema: {errors}. "
                "Reply again with only the corrected JSON, nothing else."
            ),
        ),
    ]


def _structured_error(
    response: GenerateResponse, errors: str, *, retried: bool
) -> StructuredOutputError:
    if response.finish_reason == "length":
        why = "the output was cut off at max_output_tokens before the JSON was complete"
    elif retried:
        why = "the answer did not validate, and neither did the retry with the errors fed back"
    else:
        why = "the answer did not validate"
    return StructuredOutputError(
        f"structured output failed: {why}: {errors}",
        raw=response.content,
        errors=errors,
        response=response,
    )


# ---------------------------------------------------------------------- streams
class StreamChecker:
    """Passes a stream's chunks through; the last chunk gets validated ``tool_calls`` and
    ``parsed``, or the stream ends with ToolCallError / StructuredOutputError."""

    def __init__(self, request: GenerationRequest, model: str, provider: str) -> None:
        self._request = request
        self._collector = StreamCollector(model, provider)
        self._active = bool(request.tools) or request.response_format is not None

    def feed(self, chunk: StreamChunk) -> StreamChunk:
        """``chunk`` as the caller gets it."""
        if not self._active:
            return chunk
        self._collector.add(chunk)
        if chunk.finish_reason is None:
            return chunk
        response = self._collector.result()
        final = _with_tool_calls(self._request, response)
        update: dict[str, Any] = {"tool_calls": final.tool_calls}
        fmt = self._request.response_format
        if fmt is not None and not final.tool_calls:
            try:
                update["parsed"] = fmt.parse(final.content)
            except ValueError as exc:
                raise _structured_error(final, str(exc), retried=False) from None
        return chunk.model_copy(update=update)
