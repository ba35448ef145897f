"""MLXProvider: the thin face of the in-process MLX engine.

It validates a request, renders the chat template into token ids on the caller's thread,
checks the context window, and submits the job to the engine thread. Streaming is the
primitive: ``generate`` drains the same item stream as ``stream`` (one that the engine sends
as a single Final, since nobody reads the pieces); async callers are fed through
``call_soon_threadsafe`` and never block their event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, cast

from ...errors import ContextLengthError, InvalidRequestError, RequestTimeoutError
from ...request import GenerationRequest
from ...types import GenerateResponse, Message, StreamChunk, Timing, Usage
from ..base import BaseProvider, Features, MessageInput
from .cache_scheduler import CacheScheduler
from .engine import MLXEngine
from .options import EngineOptions
from .protocol import AsyncSink, Final, Job, ThreadSink
from .sampling import SamplingParams

__all__ = ["DEFAULT_MAX_OUTPUT_TOKENS", "MLXProvider"]

#: Output cap when a request gives no max_output_tokens (clipped to the context left).
DEFAULT_MAX_OUTPUT_TOKENS = 1024

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
    # Tools, structured output and logprobs need grammar-constrained decoding and per-row
    # log-probabilities inside the batch: until the engine has them, they are refused.
    features: ClassVar[Features] = Features(why="not implemented in the MLX engine yet")
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
        self._tokenizer = self._engine.tokenizer
        self._tokenizer_lock = threading.Lock()
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
        return self._encode(
            self.build_request(prompt, messages=messages, system_prompt=system_prompt)
        )

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
        prefix_nodes)."""
        return self._engine.stats()

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

    # ------------------------------------------------------------------ request -> job
    def _encode(self, request: GenerationRequest) -> list[int]:
        msgs = [_message_dict(m) for m in request.messages]
        kwargs: dict[str, Any] = {"add_generation_prompt": True}
        tok = self._tokenizer
        with self._tokenizer_lock:  # HF fast tokenizers are not safe to share across threads
            if getattr(tok, "chat_template", None) or getattr(tok, "_chat_template", None):
                ids = tok.apply_chat_template(msgs, **kwargs)
            else:
                text = "\n\n".join(m["content"] for m in msgs)
                ids = tok.encode(text, add_special_tokens=True)
        return [int(i) for i in ids]

    def _prepare(self, request: GenerationRequest) -> Job:
        min_p = _check_min_p(request.extra.get("min_p"))  # extras are limited to extra_options
        tokens = self._encode(request)
        n = len(tokens)
        if n == 0:
            raise InvalidRequestError(
                "the prompt encodes to no tokens", field="prompt", provider="mlx"
            )
        ctx = self._engine.context_length
        max_tokens = request.max_output_tokens
        if ctx is not None:
            room = ctx - n
            if room <= 0:
                raise ContextLengthError(
                    f"the prompt is {n} tokens; the model's context window is {ctx} tokens",
                    field="messages",
                    provider=self.provider_name,
                )
            if max_tokens is None:
                max_tokens = min(DEFAULT_MAX_OUTPUT_TOKENS, room)
            elif max_tokens > room:
                raise ContextLengthError(
                    f"the prompt ({n} tokens) plus max_output_tokens ({max_tokens}) exceeds "
                    f"the model's context window of {ctx} tokens",
                    field="max_output_tokens",
                    provider=self.provider_name,
                )
        elif max_tokens is None:
            max_tokens = DEFAULT_MAX_OUTPUT_TOKENS
        sampling = SamplingParams(
            temperature=request.temperature or 0.0,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=request.top_k or 0,
            min_p=min_p,
        )
        return Job(
            prompt_tokens=tokens,
            max_tokens=max_tokens,
            sampling=sampling,
            seed=request.seed,
            stop=tuple(request.stop),
            prompt_cache_key=request.prompt_cache_key,
        )

    # ------------------------------------------------------------------ sync transport
    def _items(
        self, job: Job, timeout: float | None, *, streaming: bool
    ) -> Generator[str | Final, None, None]:
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
                if type(item) is str:
                    yield item
                elif type(item) is Final:
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
        return self._chunks(self._prepare(request), request.timeout)

    def _chunks(self, job: Job, timeout: float | None) -> Iterator[StreamChunk]:
        with contextlib.closing(self._items(job, timeout, streaming=True)) as items:
            for item in items:
                yield StreamChunk(content=item) if isinstance(item, str) else self._last_chunk(item)

    def _generate(self, request: GenerationRequest) -> GenerateResponse:
        parts: list[str] = []
        job = self._prepare(request)
        with contextlib.closing(self._items(job, request.timeout, streaming=False)) as items:
            for item in items:
                if isinstance(item, str):
                    parts.append(item)
                else:
                    return self._response(parts, item)
        raise AssertionError("unreachable: the item stream ends with a Final or raises")

    # ------------------------------------------------------------------ async transport
    async def _aitems(
        self, job: Job, timeout: float | None, *, streaming: bool
    ) -> AsyncGenerator[str | Final, None]:
        loop = asyncio.get_running_loop()
        sink = AsyncSink(loop, streaming=streaming)
        state = self._engine.submit(job, sink)
        timer = None if timeout is None else loop.call_later(timeout, sink.put, _TIMEOUT)
        get = sink.queue.get
        ended = False
        try:
            while True:
                item = await get()
                if type(item) is str:
                    yield item
                elif type(item) is Final:
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
        return self._achunks(self._prepare(request), request.timeout)

    async def _achunks(self, job: Job, timeout: float | None) -> AsyncIterator[StreamChunk]:
        async with contextlib.aclosing(self._aitems(job, timeout, streaming=True)) as items:
            async for item in items:
                yield StreamChunk(content=item) if isinstance(item, str) else self._last_chunk(item)

    async def _agenerate(self, request: GenerationRequest) -> GenerateResponse:
        parts: list[str] = []
        job = self._prepare(request)
        async with contextlib.aclosing(
            self._aitems(job, request.timeout, streaming=False)
        ) as items:
            async for item in items:
                if isinstance(item, str):
                    parts.append(item)
                else:
                    return self._response(parts, item)
        raise AssertionError("unreachable: the item stream ends with a Final or raises")

    # ------------------------------------------------------------------ results
    def _response(self, parts: list[str], final: Final) -> GenerateResponse:
        parts.append(final.text)
        return GenerateResponse(
            content="".join(parts),
            finish_reason=final.finish_reason,  # type: ignore[arg-type]
            usage=_usage(final),
            timing=_timing(final),
            model=self.model,
            provider=self.provider_name,
        )

    def _last_chunk(self, final: Final) -> StreamChunk:
        return StreamChunk(
            content=final.text,
            finish_reason=final.finish_reason,  # type: ignore[arg-type]
            usage=_usage(final),
            timing=_timing(final),
            model=self.model,
            provider=self.provider_name,
        )


def _usage(final: Final) -> Usage:
    return Usage(
        prompt_tokens=final.prompt_tokens,
        completion_tokens=final.completion_tokens,
        cached_tokens=final.cached_tokens,
    )


def _timing(final: Final) -> Timing:
    return Timing(
        queued_s=final.queued_s,
        ttft_s=final.ttft_s,
        total_s=final.total_s,
        decode_tokens_per_s=final.decode_tokens_per_s,
    )


def _timeout_error(timeout: float | None) -> RequestTimeoutError:
    return RequestTimeoutError(
        f"the request did not finish within timeout={timeout:g} s", provider="mlx"
    )


def _message_dict(m: Message) -> dict[str, Any]:
    d: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.name is not None:
        d["name"] = m.name
    if m.tool_call_id is not None:
        d["tool_call_id"] = m.tool_call_id
    return d


def _check_min_p(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InvalidRequestError(
            f"min_p must be a number in [0, 1], got {value!r}", field="min_p", provider="mlx"
        )
    return float(value)


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
