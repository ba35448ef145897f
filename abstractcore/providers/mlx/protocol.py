"""What crosses between the engine thread and its callers: jobs, commands, results, sinks.

Only plain Python crosses: a caller submits a :class:`Job` (token ids and settings) and
sends typed commands (:data:`Command`) through the engine's inbox; the engine delivers
``str`` pieces of text, one :class:`Final` and nothing after it, or an exception instance.
A sink that is not ``streaming`` (``generate`` and ``agenerate``) gets no pieces: the engine
holds the text and sends it in the Final, so a whole answer wakes its caller once instead of
once per token. Sync callers read a ``queue.SimpleQueue``; async callers an
``asyncio.Queue`` fed by ``call_soon_threadsafe``, which the engine's :class:`Outbox`
batches per step and per event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .sampling import SamplingParams

if TYPE_CHECKING:
    from .request_state import RequestState

__all__ = [
    "AsyncSink",
    "Call",
    "Cancel",
    "Command",
    "Final",
    "Job",
    "Outbox",
    "Piece",
    "Sink",
    "Stop",
    "Submit",
    "ThreadSink",
    "TokenScores",
    "put_threadsafe",
]


@dataclass(frozen=True, slots=True)
class Job:
    """What the provider submits: token ids and the per-request generation settings.

    ``grammar`` (a grammar.RowGrammar, compiled on the caller's thread) constrains the
    tokens; ``top_logprobs`` (0-20) asks for each token's log-probability and that many
    alternatives, None for none. ``kv_bytes`` is the KV memory the request reserves while it
    runs (memory_plan.py; 0: nothing reserved).
    """

    prompt_tokens: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    prompt_cache_key: str | None = None
    grammar: Any = None
    top_logprobs: int | None = None
    kv_bytes: int = 0


#: One generated token's scores: (token id, log-probability, ((id, log-probability), ...) of
#: the most likely tokens at its position, best first).
TokenScores = tuple[int, float, tuple[tuple[int, float], ...]]


@dataclass(frozen=True, slots=True)
class Piece:
    """Streamed text with the scores of the tokens it came from (requests with logprobs; the
    others get plain ``str`` pieces)."""

    text: str
    scores: tuple[TokenScores, ...]


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
    scores: tuple[TokenScores, ...] = ()


# ---------------------------------------------------------------------- commands
@dataclass(frozen=True, slots=True)
class Submit:
    """Queue a request (the caller keeps the state to cancel it)."""

    state: RequestState


@dataclass(frozen=True, slots=True)
class Cancel:
    """Drop a request: its caller went away, so nothing more is delivered."""

    state: RequestState


@dataclass(frozen=True, slots=True)
class Call:
    """Run ``fn(engine)`` on the engine thread between two steps; the result goes to
    ``future``."""

    fn: Callable[[Any], Any]
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop the engine thread (pending requests get GenerationCancelledError)."""


Command = Submit | Cancel | Call | Stop


# ---------------------------------------------------------------------- delivery
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
