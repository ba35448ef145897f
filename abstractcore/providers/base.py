"""BaseProvider: the contract every provider implements.

The public verbs (``generate``, ``agenerate``, ``stream``, ``astream``) validate their
arguments once (:mod:`._request`) into a :class:`GenerationRequest`; providers implement
only the transport hooks (``_stream``/``_astream`` and optionally ``_generate``/
``_agenerate``). Validation happens when a verb is called, not when its iterator is first
advanced, so a bad argument fails at the call site for streams too. What comes back goes
through :mod:`._outputs` (tool-call arguments and structured output validated, one retry for
output that does not match its schema) the same way for every provider.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

from typing_extensions import Self

from ..errors import InvalidRequestError
from ..request import GenerationRequest
from ..types import GenerateResponse, StreamChunk
from ._outputs import StreamChecker, StreamCollector, adrive, checked_response, drive
from ._request import DEFAULTABLE, MessageInput, RequestBuilder
from .features import Features

if TYPE_CHECKING:
    from ..tools.loop import ToolRun

__all__ = ["BaseProvider", "Features", "MessageInput", "StreamCollector"]


class BaseProvider(ABC):
    """One model on one backend, with the same four verbs for every backend."""

    provider_name: ClassVar[str] = "base"
    # Extra keyword arguments a provider accepts beyond the common ones (e.g. "min_p" for MLX,
    # "extra_body" for HTTP providers). Anything else is rejected, so a typo such as
    # ``temprature=0.3`` fails loudly instead of being silently ignored or sent on the wire.
    extra_options: ClassVar[frozenset[str]] = frozenset()
    # What the backend can do beyond text; a plugin that declares nothing gets plain text
    # only, and a request for more fails with UnsupportedFeatureError.
    features: ClassVar[Features] = Features()
    # Model used when create_llm() is given none (e.g. the embedded MLX model); None = required.
    default_model: ClassVar[str | None] = None

    def __init__(self, model: str, **defaults: Any) -> None:
        if not isinstance(model, str) or not model.strip():
            raise InvalidRequestError("model must be a non-empty string", field="model")
        unknown = sorted(set(defaults) - set(DEFAULTABLE))
        if unknown:
            raise InvalidRequestError(
                f"unknown option(s) for provider {self.provider_name!r}: {', '.join(unknown)}",
                field=unknown[0],
            )
        self.model = model
        # Validate defaults now so a bad create_llm(temperature=-1) fails at construction.
        self.defaults: dict[str, Any] = {k: v for k, v in defaults.items() if v is not None}
        self._requests = RequestBuilder(
            self.provider_name, self.defaults, self.extra_options, self.features
        )
        if self.defaults:
            self.build_request("x", **{k: None for k in self.defaults})

    # ------------------------------------------------------------------ request building
    def build_request(self, prompt: str | None = None, **kwargs: Any) -> GenerationRequest:
        """Validate the public arguments into a provider-neutral request.

        Accepts what the verbs accept: ``prompt`` or ``messages``, ``system_prompt``,
        ``max_output_tokens``, ``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop``,
        ``prompt_cache_key``, ``timeout``, ``tools``, ``tool_choice``,
        ``parallel_tool_calls``, ``response_model``, ``response_format``, ``logprobs``,
        ``top_logprobs``, and the provider's ``extra_options``."""
        return self._requests.build(prompt, **kwargs)

    # ------------------------------------------------------------------ public verbs
    def generate(self, prompt: str | None = None, **kwargs: Any) -> GenerateResponse:
        """Generate a complete response (blocking)."""
        return drive(checked_response(self.build_request(prompt, **kwargs)), self._generate)

    async def agenerate(self, prompt: str | None = None, **kwargs: Any) -> GenerateResponse:
        """Generate a complete response without blocking the event loop."""
        return await adrive(checked_response(self.build_request(prompt, **kwargs)), self._agenerate)

    def stream(self, prompt: str | None = None, **kwargs: Any) -> Iterator[StreamChunk]:
        """Stream the response as chunks; the last chunk carries finish_reason and usage
        (and the assembled ``tool_calls`` / ``parsed``)."""
        request = self.build_request(prompt, **kwargs)
        return self._checked_stream(request, self._stream(request))

    def astream(self, prompt: str | None = None, **kwargs: Any) -> AsyncIterator[StreamChunk]:
        """Async twin of :meth:`stream` (``async for chunk in llm.astream(...)``)."""
        request = self.build_request(prompt, **kwargs)
        return self._achecked_stream(request, self._astream(request))

    def run_tools(
        self,
        prompt: str | None = None,
        *,
        tools: Sequence[Any],
        max_turns: int | None = None,
        **kwargs: Any,
    ) -> ToolRun:
        """Call the model, run the Python tools it asks for, feed the results back, until a
        final answer (see :func:`abstractcore.tools.run_tools`)."""
        from ..tools.loop import DEFAULT_MAX_TURNS, run_tools

        turns = DEFAULT_MAX_TURNS if max_turns is None else max_turns
        return run_tools(self, prompt, tools=tools, max_turns=turns, **kwargs)

    async def arun_tools(
        self,
        prompt: str | None = None,
        *,
        tools: Sequence[Any],
        max_turns: int | None = None,
        **kwargs: Any,
    ) -> ToolRun:
        """Async twin of :meth:`run_tools` (a turn's calls run concurrently)."""
        from ..tools.loop import DEFAULT_MAX_TURNS, arun_tools

        turns = DEFAULT_MAX_TURNS if max_turns is None else max_turns
        return await arun_tools(self, prompt, tools=tools, max_turns=turns, **kwargs)

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

    def _checked_stream(
        self, request: GenerationRequest, chunks: Iterator[StreamChunk]
    ) -> Iterator[StreamChunk]:
        if not request.tools and request.response_format is None:
            return chunks  # nothing to assemble or validate: the provider's own iterator
        return self._checking(StreamChecker(request, self.model, self.provider_name), chunks)

    @staticmethod
    def _checking(checker: StreamChecker, chunks: Iterator[StreamChunk]) -> Iterator[StreamChunk]:
        with _closing(chunks):
            for chunk in chunks:
                yield checker.feed(chunk)

    def _achecked_stream(
        self, request: GenerationRequest, chunks: AsyncIterator[StreamChunk]
    ) -> AsyncIterator[StreamChunk]:
        if not request.tools and request.response_format is None:
            return chunks
        return self._achecking(StreamChecker(request, self.model, self.provider_name), chunks)

    @staticmethod
    async def _achecking(
        checker: StreamChecker, chunks: AsyncIterator[StreamChunk]
    ) -> AsyncIterator[StreamChunk]:
        try:
            async for chunk in chunks:
                yield checker.feed(chunk)
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

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


class _closing:
    """Closes a generator when the consumer stops early (contextlib.closing, typed loosely:
    a provider's iterator need not be a generator)."""

    def __init__(self, it: Any) -> None:
        self._it = it

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()
