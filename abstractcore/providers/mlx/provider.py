"""MLXProvider: the thin face of the in-process MLX engine.

It validates a request, turns it into a Job on the caller's thread (jobs.py: the chat
template, the context window, grammars), and submits the job to the engine thread; what
comes back becomes chunks and responses (responses.py: tool calls read out, logprobs).
Streaming is the primitive: ``generate`` drains the same item stream as ``stream`` (one
that the engine sends as a single Final, since nobody reads the pieces); async callers are
fed through ``call_soon_threadsafe`` and never block their event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, cast

from ...errors import InvalidRequestError, RequestTimeoutError
from ...request import GenerationRequest
from ...types import GenerateResponse, StreamChunk
from ..base import BaseProvider, Features, MessageInput
from .cache_scheduler import CacheScheduler
from .engine import MLXEngine
from .jobs import DEFAULT_MAX_OUTPUT_TOKENS, JobBuilder, Prepared
from .options import EngineOptions
from .protocol import AsyncSink, Final, Job, Piece, ThreadSink
from .responses import Answer, TokenTexts

__all__ = ["DEFAULT_MAX_OUTPUT_TOKENS", "MLXProvider"]

_EXTRA_OPTIONS = ("min_p",)
_TIMEOUT = object()  # queued by a loop timer when an async request's timeout elapses


class MLXProvider(BaseProvider):
    """A local MLX model served by one continuously batched engine thread.

    ``MLXProvider("smollm2-135m")`` (or ``create_llm("mlx")``) loads the model before it
    returns; concurrent ``agenerate``/``generate`` calls, from tasks or threads, share one
    batched decode. ``dtype`` is the GGUF conversion dtype. The engine's options are the
    fields of :class:`~.options.EngineOptions`, given as keyword arguments
    (``MLXProvider(max_batch_size=8, prompt_cache_bytes=0)``) or as ``options=``:
    ``max_batch_size``, ``prefill_batch_size``, ``prefill_step_size``, ``max_queue``,
    ``queue_timeout_s``, the prompt cache's ``prompt_cache_bytes``, ``prefix_cache`` and
    ``share_prefix_across_keys`` (docs/concurrency.md), and the speed switches
    ``solo_decode``, ``pad_rows``, ``fast_cpu_ops``. Other keyword arguments are generation
    defaults (``temperature=0``...).
    """

    provider_name: ClassVar[str] = "mlx"
    extra_options: ClassVar[frozenset[str]] = frozenset(_EXTRA_OPTIONS)
    # Structured output and forced tool calls are grammars inside the batch (grammar.py);
    # the limits of that mapping (jobs.py) are refused per request, naming the field.
    features: ClassVar[Features] = Features(
        tools=True, parallel_tool_calls=True, structured_output=True, logprobs=True
    )
    default_model: ClassVar[str | None] = "smollm2-135m"

    def __init__(
        self,
        model: str = "smollm2-135m",
        *,
        dtype: str | None = None,
        options: EngineOptions | None = None,
        **kwargs: Any,
    ) -> None:
        engine = {k: kwargs.pop(k) for k in list(kwargs) if k in EngineOptions.model_fields}
        super().__init__(model, **kwargs)
        base = {} if options is None else options.model_dump()
        options = EngineOptions.from_options({**base, **engine})
        from .loading import preload_blas, resolve_model_path

        path = resolve_model_path(model, dtype=dtype)
        preload_blas()
        # mlx-lm creates a module-level stream at import, bound to the importing thread:
        # import it here so that stream belongs to the caller, not to the engine thread.
        import mlx_lm.generate  # noqa: F401

        self._engine = MLXEngine(path, options)
        self._engine.start()
        self._closer = weakref.finalize(self, self._engine.close)
        self._jobs = JobBuilder(
            self._engine.tokenizer,
            model_dir=path,
            context_length=self._engine.context_length,
            vocab_size=self._engine.vocab_size,
            memory=self._engine.memory,
        )
        self._texts: TokenTexts | None = None
        self.model_path = path

    # ------------------------------------------------------------------ public extras
    @property
    def context_length(self) -> int | None:
        """The model's context window in tokens (None when its config does not say)."""
        return self._engine.context_length

    @property
    def engine(self) -> MLXEngine:
        """The engine behind this provider (stats, ``call`` for diagnostics)."""
        return self._engine

    def tokenize(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[MessageInput] | None = None,
        system_prompt: str | None = None,
    ) -> list[int]:
        """The prompt token ids a request with these messages would be given."""
        request = self.build_request(prompt, messages=messages, system_prompt=system_prompt)
        return self._jobs.encode(request, [])

    def stats(self) -> dict[str, Any]:
        """Engine counters: active, queued, finished, cancelled, errors, tokens, steps,
        mean_batch_size, prefill_tok_s, decode_tok_s, model_step_s (seconds in model steps:
        ``BatchGenerator.next()`` or a solo step), busy_s, wall_s, solo_requests (requests
        started alone, without the batch machinery), solo_handovers (of those, the ones
        moved into the batch when another request arrived), row_padding (row counts whose
        dense products run padded, and to what), cpu_ops (the model functions replaced by
        faster CPU formulations: ``fast_cpu_ops``), cpu_ops_not_replaced (those no module of
        the model calls by name), mlx_lm (the installed version, whether the engine's
        speedups were verified against it, and what is off if not: compat.py), and
        ``prompt_cache`` (enabled, reason,
        entries, bytes, budget, hits, misses, evictions, tokens_saved, in_use, keyed_entries,
        prefix_nodes), ``grammars`` (cached, compiles, cache_hits, compile_s: grammar.py) and
        ``memory`` (MLX's active_bytes, cache_bytes and peak_bytes, process-wide)."""
        return {**self._engine.stats(), "grammars": self._jobs.grammars.stats()}

    def save_prompt_cache(self, key: str, path: str | os.PathLike[str]) -> Path:
        """Write the KV cache stored under ``prompt_cache_key=key`` to a safetensors file
        (``.safetensors`` is appended when missing) and return its path."""
        _check_cache_key(key)
        return cast(Path, self._engine.call(lambda e: _scheduler(e).save(key, path)))

    def load_prompt_cache(self, key: str, path: str | os.PathLike[str]) -> int:
        """Store the cache saved in ``path`` under ``key``; returns the tokens it covers.

        Raises InvalidRequestError (field ``path``) for a file made by another model."""
        _check_cache_key(key)
        return cast(int, self._engine.call(lambda e: _scheduler(e).load(key, path)))

    def close(self) -> None:
        """Stop the engine thread (requests in flight get GenerationCancelledError)."""
        self._closer()

    async def aclose(self) -> None:
        """Async twin of :meth:`close`; joins the engine thread off the event loop."""
        await asyncio.to_thread(self.close)

    # ------------------------------------------------------------------ request -> answer
    def _answer(self, prepared: Prepared) -> Answer:
        texts = None
        if prepared.job.top_logprobs is not None:
            texts = self._texts  # built on first use: reading the vocabulary takes ~0.2 s
            if texts is None:
                texts = self._texts = TokenTexts(self._jobs.grammars.llg_tokenizer())
        return Answer(self.model, self.provider_name, prepared.tool_parser(), texts)

    # ------------------------------------------------------------------ sync transport
    def _items(
        self, job: Job, timeout: float | None, *, streaming: bool
    ) -> Generator[str | Piece | Final, None, None]:
        sink = ThreadSink(streaming=streaming)
        deadline = None if timeout is None else time.monotonic() + timeout
        state = self._engine.submit(job, sink)
        get = sink.queue.get
        ended = False
        try:
            while True:
                if deadline is None:
                    item = get()
                else:
                    try:
                        item = get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        raise _timeout_error(timeout) from None
                kind = type(item)
                if kind is str or kind is Piece:
                    yield item
                elif kind is Final:
                    ended = True
                    yield item
                    return
                else:
                    ended = True
                    raise item
        finally:
            if not ended:
                self._engine.cancel(state)

    def _stream(self, request: GenerationRequest) -> Iterator[StreamChunk]:
        prepared = self._jobs.build(request)
        return self._chunks(prepared, self._answer(prepared), request.timeout)

    def _chunks(
        self, prepared: Prepared, answer: Answer, timeout: float | None
    ) -> Iterator[StreamChunk]:
        with contextlib.closing(self._items(prepared.job, timeout, streaming=True)) as items:
            for item in items:
                if isinstance(item, Final):
                    yield answer.last_chunk(item)
                elif (chunk := answer.chunk(item)) is not None:
                    yield chunk

    def _generate(self, request: GenerationRequest) -> GenerateResponse:
        prepared = self._jobs.build(request)
        answer = self._answer(prepared)
        parts: list[str] = []
        with contextlib.closing(
            self._items(prepared.job, request.timeout, streaming=False)
        ) as items:
            for item in items:
                if isinstance(item, Final):
                    return answer.response(parts, item)
                parts.append(item if isinstance(item, str) else item.text)
        raise AssertionError("unreachable: the item stream ends with a Final or raises")

    # ------------------------------------------------------------------ async transport
    async def _aitems(
        self, job: Job, timeout: float | None, *, streaming: bool
    ) -> AsyncGenerator[str | Piece | Final, None]:
        loop = asyncio.get_running_loop()
        sink = AsyncSink(loop, streaming=streaming)
        state = self._engine.submit(job, sink)
        timer = None if timeout is None else loop.call_later(timeout, sink.put, _TIMEOUT)
        get = sink.queue.get
        ended = False
        try:
            while True:
                item = await get()
                kind = type(item)
                if kind is str or kind is Piece:
                    yield item
                elif kind is Final:
                    ended = True
                    yield item
                    return
                elif item is _TIMEOUT:
                    raise _timeout_error(timeout)
                else:
                    ended = True
                    raise item
        finally:
            if timer is not None:
                timer.cancel()
            if not ended:
                self._engine.cancel(state)

    def _astream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        prepared = self._jobs.build(request)
        return self._achunks(prepared, self._answer(prepared), request.timeout)

    async def _achunks(
        self, prepared: Prepared, answer: Answer, timeout: float | None
    ) -> AsyncIterator[StreamChunk]:
        async with contextlib.aclosing(
            self._aitems(prepared.job, timeout, streaming=True)
        ) as items:
            async for item in items:
                if isinstance(item, Final):
                    yield answer.last_chunk(item)
                elif (chunk := answer.chunk(item)) is not None:
                    yield chunk

    async def _agenerate(self, request: GenerationRequest) -> GenerateResponse:
        prepared = self._jobs.build(request)
        answer = self._answer(prepared)
        parts: list[str] = []
        async with contextlib.aclosing(
            self._aitems(prepared.job, request.timeout, streaming=False)
        ) as items:
            async for item in items:
                if isinstance(item, Final):
                    return answer.response(parts, item)
                parts.append(item if isinstance(item, str) else item.text)
        raise AssertionError("unreachable: the item stream ends with a Final or raises")


def _timeout_error(timeout: float | None) -> RequestTimeoutError:
    return RequestTimeoutError(
        f"the request did not finish within timeout={timeout:g} s", provider="mlx"
    )


def _check_cache_key(key: Any) -> None:
    if not isinstance(key, str) or not key:
        raise InvalidRequestError(
            "prompt_cache_key must be a non-empty string",
            field="prompt_cache_key",
            provider="mlx",
        )


def _scheduler(engine: MLXEngine) -> CacheScheduler:
    cache = engine.cache_scheduler
    assert cache is not None, "the engine builds it with the model"
    return cache
