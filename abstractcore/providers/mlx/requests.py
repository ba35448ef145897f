"""What crosses between the engine thread and its callers: jobs, sinks, results, counters.

Only plain Python crosses: the engine delivers ``str`` pieces of text, one :class:`Final`
and nothing after it, or an exception instance. A sink that is not ``streaming`` (``generate``
and ``agenerate``) gets no pieces: the engine holds the text and sends it in the Final, so a
whole answer wakes its caller once instead of once per token. Sync callers read a
``queue.SimpleQueue``; async callers an ``asyncio.Queue`` fed by ``call_soon_threadsafe``,
which the engine's :class:`Outbox` batches per step and per event loop. Also here:
per-request engine state and stop-string matching.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .sampling import SamplingParams

__all__ = [
    "AsyncSink",
    "EngineCounters",
    "Final",
    "Job",
    "RequestState",
    "Sink",
    "StopMatcher",
    "ThreadSink",
]


@dataclass(frozen=True, slots=True)
class Job:
    """What the provider submits: token ids and the per-request generation settings."""

    prompt_tokens: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    prompt_cache_key: str | None = None


@dataclass(slots=True)
class Final:
    """The end of one generation: the last text, why it ended, token counts and timings."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    queued_s: float | None
    ttft_s: float | None
    total_s: float
    decode_tokens_per_s: float | None


class StopMatcher:
    """Finds stop strings in streamed text; holds back any tail that could start one."""

    __slots__ = ("_held", "_stops")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, matched); on a match the text is cut before the stop."""
        buf = self._held + text
        cut = -1
        for s in self._stops:
            i = buf.find(s)
            if i != -1 and (cut == -1 or i < cut):
                cut = i
        if cut != -1:
            self._held = ""
            return buf[:cut], True
        keep = 0
        for s in self._stops:
            for k in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:k]):
                    keep = k
                    break
        if keep:
            self._held = buf[-keep:]
            return buf[:-keep], False
        self._held = ""
        return buf, False

    def flush(self) -> str:
        """The held-back text, released when the generation ends without a match."""
        held, self._held = self._held, ""
        return held


class ThreadSink:
    """Delivery to a blocking caller thread."""

    __slots__ = ("put", "queue", "streaming")
    loop: asyncio.AbstractEventLoop | None = None

    def __init__(self, *, streaming: bool = True) -> None:
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.put = self.queue.put
        self.streaming = streaming


class AsyncSink:
    """Delivery to a coroutine on ``loop``; the engine calls ``put`` only through the loop."""

    __slots__ = ("loop", "put", "queue", "streaming")

    def __init__(self, loop: asyncio.AbstractEventLoop, *, streaming: bool = True) -> None:
        self.loop: asyncio.AbstractEventLoop | None = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.put = self.queue.put_nowait
        self.streaming = streaming


Sink = ThreadSink | AsyncSink


def _put_all(items: list[tuple[Sink, Any]]) -> None:
    """Runs on an event loop: hand one engine step's items to their asyncio queues."""
    for sink, item in items:
        sink.put(item)


class Outbox:
    """Engine-side delivery: thread sinks at once, asyncio sinks batched per loop until flush."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[Sink, Any]]] = {}

    def put(self, sink: Sink, item: Any) -> None:
        """Deliver ``item`` now (thread sink) or at the next flush (asyncio sink)."""
        if sink.loop is None:
            sink.put(item)
        else:
            self._pending.setdefault(sink.loop, []).append((sink, item))

    def flush(self) -> list[Sink]:
        """One ``call_soon_threadsafe`` per event loop; returns the sinks whose loop is closed."""
        if not self._pending:
            return []
        pending, self._pending = self._pending, {}
        dead: list[Sink] = []
        for loop, items in pending.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:
                dead.extend(sink for sink, _ in items)
        return dead


def put_threadsafe(sink: Sink, item: Any) -> None:
    """Deliver ``item`` from any thread, outside the engine's per-step batching."""
    if sink.loop is None:
        sink.put(item)
        return
    try:
        sink.loop.call_soon_threadsafe(sink.put, item)
    except RuntimeError:
        pass  # the loop is closed: nobody is listening


@dataclass(eq=False, slots=True)
class RequestState:
    """One request as the engine tracks it (engine-thread fields are touched by it alone)."""

    job: Job
    sink: Sink
    submitted_at: float = field(default_factory=time.perf_counter)
    # Set by the caller side (any thread): the engine drops the request at its next step.
    cancelled: bool = False
    # Engine-thread state.
    done: bool = False
    uid: int | None = None
    admitted_at: float | None = None
    first_token_at: float | None = None
    completion_tokens: int = 0
    cache: Any = None  # its prompt-cache Hit, until the generator takes it
    cached_tokens: int = 0
    detokenizer: Any = None
    stops: StopMatcher | None = None
    held: list[str] = field(default_factory=list)  # text for a sink that is not streaming

    def final(self, text: str, finish_reason: str, now: float) -> Final:
        """The Final record for this request ending now."""
        n = self.completion_tokens
        first = self.first_token_at
        decode = None
        if first is not None and n > 1 and now > first:
            decode = (n - 1) / (now - first)
        return Final(
            text=text,
            finish_reason=finish_reason,
            prompt_tokens=len(self.job.prompt_tokens),
            completion_tokens=n,
            cached_tokens=self.cached_tokens,
            queued_s=None if self.admitted_at is None else self.admitted_at - self.submitted_at,
            ttft_s=None if first is None else first - self.submitted_at,
            total_s=now - self.submitted_at,
            decode_tokens_per_s=decode,
        )


@dataclass(slots=True)
class EngineCounters:
    """Engine-thread counters; other threads read them without a lock (ints and floats)."""

    submitted: int = 0
    finished: int = 0
    cancelled: int = 0
    errors: int = 0
    rejected: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    steps: int = 0
    decode_steps: int = 0
    decode_rows: int = 0
    prefill_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    time_in_next_s: float = 0.0
    busy_s: float = 0.0
    solo_requests: int = 0
    solo_handovers: int = 0

    def as_dict(self, *, active: int, queued: int, wall_s: float) -> dict[str, Any]:
        """The public stats: counters plus derived rates."""
        steps = self.decode_steps
        return {
            "active": active,
            "queued": queued,
            "submitted": self.submitted,
            "finished": self.finished,
            "cancelled": self.cancelled,
            "errors": self.errors,
            "rejected": self.rejected,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "steps": self.steps,
            "decode_steps": steps,
            "mean_batch_size": self.decode_rows / steps if steps else 0.0,
            "prefill_tok_s": self.prefill_tokens / self.prefill_s if self.prefill_s else 0.0,
            "decode_tok_s": self.decode_rows / self.decode_s if self.decode_s else 0.0,
            "time_in_next_s": self.time_in_next_s,
            "busy_s": self.busy_s,
            "solo_requests": self.solo_requests,
            "solo_handovers": self.solo_handovers,
            "wall_s": wall_s,
        }
