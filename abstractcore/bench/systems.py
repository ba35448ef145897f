"""The systems a sweep measures: any provider, serialized mlx_lm.generate, mlx-lm's server."""

from __future__ import annotations

import contextlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError, GenerationCancelledError, StructuredOutputError
from ..factory import available_providers, canonical_name, create_llm
from .llama_server import LlamaServer, serves_float32
from .metrics import QueryResult
from .mlx_lm_server import MLXLMServer
from .scenarios import Query
from .schemas import answer_is_valid
from .sweep_config import (
    ENGINE,
    ENGINE_STREAM,
    LLAMA_SERVER,
    LLAMA_SERVER_QUANT,
    MLX_LM_SERVER,
    SERIAL,
    BenchConfig,
    GenParams,
)
from .threads import MLXThreads

__all__ = [
    "HTTPServerSystem",
    "LlamaServerSystem",
    "MLXLMServerSystem",
    "ProviderSystem",
    "SerialMLXSystem",
    "System",
    "build_system",
]

_WARMUP = Query(id="warmup", messages=[{"role": "user", "content": "Say hello."}])


class System(ABC):
    """One backend under test: started once, warmed up, then driven level by level."""

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    async def start(self) -> None:
        """Load the model / start the server; may take a while."""

    @abstractmethod
    async def run_query(
        self, index: int, query: Query, params: GenParams, concurrency: int
    ) -> QueryResult:
        """Run one query and measure it; errors are recorded, never raised."""

    async def warmup(self, params: GenParams) -> None:
        """One unmeasured request so first-call costs stay out of the numbers."""
        warm = GenParams(min(params.max_output_tokens, 8), params.temperature, params.seed)
        result = await self.run_query(-1, _WARMUP, warm, 1)
        if result.error:
            raise RuntimeError(f"warm-up request failed: {result.error}")

    def check(self) -> None:
        """Cheap validation before anything starts (raises ConfigurationError)."""

    def engine_stats(self) -> dict[str, Any] | None:
        """The backend's own counters (``llm.stats()``) when it has them."""
        return None

    def tokens_generated(self) -> int | None:
        """Tokens generated so far, counting queries still running (progress lines); None
        when only finished queries can be counted."""
        return None

    def memory_sample(self) -> dict[str, int] | None:
        """What the system holds now: ``memory`` (bytes) and, for the MLX engine,
        ``kv_reserved``; None when it cannot be seen from here."""
        return None

    @abstractmethod
    async def close(self) -> None:
        """Release everything :meth:`start` acquired; safe to call twice."""

    def kill(self) -> None:
        """Last-resort synchronous cleanup (second Ctrl-C): stop child processes now."""


class ProviderSystem(System):
    """Any abstractcore provider, one query per ``astream`` (or ``agenerate``) call.

    Streaming measures TTFT where a client sees it: the first content chunk. With
    ``stream=False`` each query is one ``agenerate`` call, the way an app awaits answers under
    ``asyncio.gather``; its TTFT is the call's duration minus the provider's own time from
    first token to end (``response.timing``; both are this process's ``perf_counter``). A
    provider that reports no timing then has no TTFT.
    """

    def __init__(self, name: str, options: dict[str, Any], *, stream: bool = True) -> None:
        super().__init__(name)
        self._options = options
        self.stream = stream
        self._threads = MLXThreads(f"bench-{name}-load", 1)
        self.llm: Any = None
        self._streamed = 0  # content chunks received, all queries together

    async def start(self) -> None:
        # Constructing a provider may load a model (MLX): off the loop, on a thread we reap.
        await self._threads.run(self._build)

    def _build(self) -> None:
        self.llm = create_llm(**self._options)

    def check(self) -> None:
        """Resolve provider, model and profile settings now, so a typo fails before any load."""
        from ..config import resolve_config

        opts = dict(self._options)
        cfg = resolve_config(opts.pop("provider", None), opts.pop("model", None),
                             profile=opts.pop("profile", None), options=opts)  # fmt: skip
        if canonical_name(cfg.provider) not in available_providers():
            raise ConfigurationError(
                f"unknown provider {cfg.provider!r}; available: {', '.join(available_providers())}",
                setting="provider",
            )

    async def run_query(
        self, index: int, query: Query, params: GenParams, concurrency: int
    ) -> QueryResult:
        kwargs: dict[str, Any] = {
            "messages": query.messages,
            "max_output_tokens": params.max_output_tokens,
            "temperature": params.temperature,
            **query.options,
        }
        if params.seed is not None:
            kwargs["seed"] = params.seed
        start = time.perf_counter()
        out = _Outcome()
        try:
            await (self._stream(kwargs, out) if self.stream else self._generate(kwargs, out))
        except StructuredOutputError as exc:
            if exc.response is None:
                out.error = _describe(exc)
            else:  # an answer that does not validate is a measured answer, not a failure
                out.usage, out.finish = exc.response.usage, exc.response.finish_reason
                out.text = [exc.response.content]
        except Exception as exc:  # noqa: BLE001 - a failed request is a measurement, not a crash
            out.error = _describe(exc)
        end = time.perf_counter()
        first = out.arrivals.first
        if first is None and out.first_to_end_s is not None:
            first = max(start, end - out.first_to_end_s)
        usage = out.usage if out.usage is not None and out.usage.reported else None
        return QueryResult(
            system=self.name,
            concurrency=concurrency,
            query_index=index,
            prompt_id=query.id,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            # Without usage (a server that omits it) each content chunk is one token.
            output_tokens=usage.completion_tokens if usage else out.chunks,
            cached_tokens=usage.cached_tokens if usage else 0,
            ttft_s=None if first is None else first - start,
            duration_s=end - start,
            finish_reason=out.finish,
            error=out.error,
            valid=_validity(query, "".join(out.text)),
            gaps_s=tuple(out.arrivals.gaps) if out.error is None else (),
        )

    async def _stream(self, kwargs: dict[str, Any], out: _Outcome) -> None:
        stream: AsyncIterator[Any] = self.llm.astream(**kwargs)
        async with _aclosing(stream):
            async for chunk in stream:
                if chunk.content:
                    out.arrivals.tick()
                    out.chunks += 1
                    self._streamed += 1
                    out.text.append(chunk.content)
                if chunk.usage is not None:
                    out.usage = chunk.usage
                if chunk.finish_reason is not None:
                    out.finish = chunk.finish_reason

    async def _generate(self, kwargs: dict[str, Any], out: _Outcome) -> None:
        response = await self.llm.agenerate(**kwargs)
        out.usage, out.finish = response.usage, response.finish_reason
        out.chunks = 1 if response.content else 0
        out.text = [response.content]
        timing = response.timing
        if timing.ttft_s is not None and timing.total_s is not None:
            out.first_to_end_s = max(0.0, timing.total_s - timing.ttft_s)

    def engine_stats(self) -> dict[str, Any] | None:
        stats = getattr(self.llm, "stats", None)
        if not callable(stats):
            return None
        value = stats()
        if hasattr(value, "model_dump"):
            value = value.model_dump()
        elif hasattr(value, "__dataclass_fields__"):
            import dataclasses

            value = dataclasses.asdict(value)
        return dict(value) if isinstance(value, dict) else None

    def tokens_generated(self) -> int | None:
        if self.stream:
            return self._streamed
        generated = (self.engine_stats() or {}).get("generated_tokens")  # the MLX engine's
        return generated if isinstance(generated, int) else None

    def memory_sample(self) -> dict[str, int] | None:
        memory = (self.engine_stats() or {}).get("memory")
        if not isinstance(memory, dict) or "active_bytes" not in memory:
            return None
        out = {"memory": int(memory["active_bytes"])}
        if "kv_reserved_bytes" in memory:
            out["kv_reserved"] = int(memory["kv_reserved_bytes"])
        return out

    async def close(self) -> None:
        await self._threads.shutdown()  # a Ctrl-C during loading: let the load finish first
        llm, self.llm = self.llm, None
        if llm is not None:
            await llm.aclose()


class SerialMLXSystem(System):
    """What peers do: one lock around ``mlx_lm`` generation, called via ``asyncio.to_thread``.

    ``mlx_lm.generate`` drains ``stream_generate``; calling the latter directly under the same
    lock is the same work and lets us time the first token. The thread pool is our own (sized
    like asyncio's default executor) only so that its MLX threads are reaped before exit.
    ``mlx_lm.generate`` has no structured output: a ``structured`` query's schema reaches it
    in the prompt only (so does mlx-lm's server, which ignores ``response_format``).
    """

    def __init__(self, model: str) -> None:
        super().__init__(SERIAL)
        self._model_ref = model
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = MLXThreads("bench-serial")
        self._model: Any = None
        self._tokenizer: Any = None

    async def start(self) -> None:
        self._model, self._tokenizer = await self._threads.run(_load_mlx_lm, self._model_ref)

    async def run_query(
        self, index: int, query: Query, params: GenParams, concurrency: int
    ) -> QueryResult:
        start = time.perf_counter()
        try:
            out = await self._threads.run(self._generate_locked, query, params)
            error = None
        except Exception as exc:  # noqa: BLE001 - a failed request is a measurement
            out, error = {}, _describe(exc)
        first = out.get("first")
        return QueryResult(
            system=self.name,
            concurrency=concurrency,
            query_index=index,
            prompt_id=query.id,
            prompt_tokens=out.get("prompt_tokens", 0),
            output_tokens=out.get("output_tokens", 0),
            ttft_s=None if first is None else first - start,
            duration_s=out.get("end", time.perf_counter()) - start,
            finish_reason=out.get("finish"),
            error=error,
            valid=_validity(query, out.get("text", "")),
            gaps_s=out.get("gaps", ()),
        )

    def _generate_locked(self, query: Query, params: GenParams) -> dict[str, Any]:
        import mlx.core as mx
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        with self._lock:
            if self._stop.is_set():
                raise GenerationCancelledError("benchmark stopping")
            prompt = self._tokenizer.apply_chat_template(query.messages, add_generation_prompt=True)
            if params.seed is not None:
                mx.random.seed(params.seed)
            arrivals = _Arrivals()
            last: Any = None
            text: list[str] = []
            for last in stream_generate(
                self._model,
                self._tokenizer,
                prompt,
                max_tokens=params.max_output_tokens,
                sampler=make_sampler(temp=params.temperature),
            ):
                text.append(last.text)
                if last.text:
                    arrivals.tick()
                if self._stop.is_set():
                    break
            end = time.perf_counter()
        if last is None:
            return {"prompt_tokens": len(prompt), "output_tokens": 0, "end": end, "finish": "stop"}
        finish = last.finish_reason or "cancelled"
        # stream_generate counts the EOS token it stopped on; other systems do not.
        tokens = last.generation_tokens - (1 if finish == "stop" else 0)
        return {
            "prompt_tokens": last.prompt_tokens,
            "output_tokens": tokens,
            "first": arrivals.first,
            "end": end,
            "finish": finish,
            "text": "".join(text),
            "gaps": tuple(arrivals.gaps),
        }

    async def close(self) -> None:
        self._stop.set()
        # In-flight generations stop within one token; then the worker threads are reaped.
        await self._threads.shutdown()
        self._model = self._tokenizer = None


class HTTPServerSystem(System):
    """A server the benchmark starts itself, driven through the openai-compatible provider
    with streaming (the first chunk on the wire is its TTFT); subclasses launch and stop it."""

    def __init__(self, name: str, model_id: str) -> None:
        super().__init__(name)
        self._model_id = model_id
        self._client: ProviderSystem | None = None

    @abstractmethod
    async def launch(self) -> str:
        """Start the server; its base URL (``.../v1``)."""

    @abstractmethod
    async def shutdown(self) -> None:
        """Stop what :meth:`launch` started; safe to call twice."""

    def server_pid(self) -> int | None:
        """The server's process id while it runs."""
        return None

    def tokens_generated(self) -> int | None:
        return None if self._client is None else self._client.tokens_generated()

    def memory_sample(self) -> dict[str, int] | None:
        rss = resident_bytes(self.server_pid())
        return None if rss is None else {"memory": rss}

    async def start(self) -> None:
        base_url = await self.launch()
        options = {"provider": "openai-compatible", "model": self._model_id, "base_url": base_url}
        self._client = ProviderSystem(self.name, options)
        await self._client.start()

    async def run_query(
        self, index: int, query: Query, params: GenParams, concurrency: int
    ) -> QueryResult:
        assert self._client is not None, "start() first"
        return await self._client.run_query(index, query, params, concurrency)

    async def close(self) -> None:
        try:
            if self._client is not None:
                await self._client.close()
        finally:
            self._client = None
            await self.shutdown()


class _ChildServerSystem(HTTPServerSystem):
    """A server that is one child process of the benchmark (child_server.py)."""

    _server: MLXLMServer | LlamaServer

    async def launch(self) -> str:
        return await self._server.start()

    async def shutdown(self) -> None:
        await self._server.stop()

    def server_pid(self) -> int | None:
        proc = self._server.proc
        return None if proc is None else proc.pid

    def kill(self) -> None:
        self._server.kill()


class MLXLMServerSystem(_ChildServerSystem):
    """mlx-lm's own server on loopback."""

    def __init__(self, model: str, max_concurrency: int, start_timeout_s: float) -> None:
        # "default_model" is the server's name for the model it was started with.
        super().__init__(MLX_LM_SERVER, "default_model")
        self._server = MLXLMServer(model, max_concurrency, start_timeout_s)


class LlamaServerSystem(_ChildServerSystem):
    """llama.cpp's ``llama-server`` on loopback, one slot per request of the highest level
    (started fresh with the benchmark: it keeps earlier prompts in its slots)."""

    def __init__(self, name: str, model: str, slots: int, start_timeout_s: float) -> None:
        super().__init__(name, model)
        float32 = name == LLAMA_SERVER and serves_float32()
        self._llama = LlamaServer(model, slots, start_timeout_s, float32=float32, label=name)
        self._server = self._llama

    def check(self) -> None:
        self._llama.check()


def build_system(name: str, config: BenchConfig) -> System:
    """The system called ``name`` in ``config`` (no loading happens here)."""
    max_level = max(config.levels)
    if name == SERIAL:
        return SerialMLXSystem(config.model)
    if name == MLX_LM_SERVER:
        return MLXLMServerSystem(config.model, max_level, config.server_start_timeout_s)
    if name in (LLAMA_SERVER, LLAMA_SERVER_QUANT):
        return LlamaServerSystem(name, config.model, max_level, config.server_start_timeout_s)
    if name == config.primary_name:
        options: dict[str, Any] = {"provider": config.provider, "model": config.model}
        if config.profile:
            options = {"provider": None, "model": None, "profile": config.profile}
        if config.base_url:
            options["base_url"] = config.base_url
        embedded = config.provider == "mlx" and not config.profile
        if embedded:
            # Every in-flight request of the highest level must fit in one batch.
            options["max_batch_size"] = max(32, max_level)
        # The in-process engine is awaited the way an app awaits it (issue 3's measurement);
        # HTTP providers stream, since only the first chunk on the wire shows their TTFT.
        return ProviderSystem(name, _drop_none(options), stream=not embedded)
    if name in (ENGINE, ENGINE_STREAM):
        options = {"provider": "mlx", "model": config.model, "max_batch_size": max(32, max_level)}
        return ProviderSystem(name, options, stream=name == ENGINE_STREAM)
    return ProviderSystem(name, {"profile": name})


def resident_bytes(pid: int | None) -> int | None:
    """A process's resident set (Linux ``/proc``); None elsewhere or once it is gone."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _drop_none(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


def _load_mlx_lm(model_ref: str) -> tuple[Any, Any]:
    from ..providers.mlx.loading import preload_blas, resolve_model_path

    preload_blas()
    from mlx_lm import load

    model, tokenizer = load(str(resolve_model_path(model_ref)))[:2]
    return model, tokenizer


@dataclass
class _Arrivals:
    """When a stream's content chunks arrived: the first, then the gaps between them."""

    first: float | None = None  # perf_counter() at the first content chunk
    gaps: list[float] = field(default_factory=list)
    _last: float = 0.0

    def tick(self) -> None:
        """A content chunk arrived now."""
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        else:
            self.gaps.append(now - self._last)
        self._last = now


@dataclass
class _Outcome:
    """What one query produced, filled in as it runs (a failure keeps what came before)."""

    usage: Any = None
    finish: str | None = None
    error: str | None = None
    chunks: int = 0
    text: list[str] = field(default_factory=list)
    arrivals: _Arrivals = field(default_factory=_Arrivals)  # content chunks (streaming)
    first_to_end_s: float | None = None  # provider-measured first token -> end (agenerate)


def _validity(query: Query, text: str) -> bool | None:
    """Whether a structured query's answer is a valid object of its schema (None: the query
    asked for none). A system that cannot enforce the schema still gets it in the prompt."""
    return None if query.schema is None else answer_is_valid(query.schema, text)


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]


@contextlib.asynccontextmanager
async def _aclosing(stream: Any) -> AsyncIterator[None]:
    try:
        yield
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
