"""Which waiting requests start, and when: the bounded queue, queue timeouts, admission order.

The engine asks the scheduler once per step for the requests to admit (:meth:`take`): up to
the free batch slots, minus those the cache scheduler defers behind a fork's lead (a wave
whose prompts share a prefix prefills it once, cache_scheduler.py), and in the order that
wastes least prefill (:meth:`order`). Everything here runs on the engine thread, except
:attr:`Scheduler.queued`, which other threads read for stats.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Collection, Iterable

from .cache_scheduler import CacheScheduler
from .options import EngineOptions
from .request_state import RequestState, RequestStatus

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)


class Scheduler:
    """The queue of requests waiting for a batch slot."""

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        #: Whether a lone request may decode solo (off at load for a model whose KV cache
        #: cannot be merged into a batch: a handover merges it).
        self.solo_decode = options.solo_decode
        self.waiting: collections.deque[RequestState] = collections.deque()
        #: Prompt-cache planning (set once the model is loaded).
        self.cache: CacheScheduler | None = None

    @property
    def queued(self) -> int:
        """Requests waiting, including those deferred behind a fork (safe from any thread)."""
        return len(self.waiting) + (self.cache.deferred if self.cache is not None else 0)

    def enqueue(self, state: RequestState, active: int) -> str | None:
        """Queue ``state``; the reason it is refused instead when the queue is full."""
        # Requests that free batch slots will take at this step do not count as queued.
        room = self.options.max_queue + max(0, self.options.max_batch_size - active)
        if len(self.waiting) >= room:
            return f"the MLX engine queue is full ({self.options.max_queue} waiting requests)"
        state.status = RequestStatus.QUEUED
        self.waiting.append(state)
        return None

    def discard(self, state: RequestState) -> None:
        """Forget a waiting request (cancelled); a deferred one is the cache scheduler's."""
        try:
            self.waiting.remove(state)
        except ValueError:
            pass  # still in the inbox (its Submit sees the flag), or deferred by a fork

    def requeue(self, states: Iterable[RequestState]) -> None:
        """Deferred fork followers go back to the front of the queue, in order."""
        back = list(states)
        for s in back:
            s.status = RequestStatus.QUEUED
        self.waiting.extendleft(reversed(back))

    def expired(self, now: float) -> list[RequestState]:
        """The requests that waited longer than ``queue_timeout_s`` (removed from the queue)."""
        timeout = self.options.queue_timeout_s
        out: list[RequestState] = []
        if timeout is None:
            return out
        while self.waiting and now - self.waiting[0].submitted_at > timeout:
            out.append(self.waiting.popleft())
        return out

    def take(self, active: Collection[RequestState]) -> list[RequestState]:
        """The requests to admit now: FIFO up to the free slots, minus the deferred ones."""
        cache = self.cache
        free = self.options.max_batch_size - len(active) - (cache.deferred if cache else 0)
        batch: list[RequestState] = []
        while self.waiting and len(batch) < free:
            batch.append(self.waiting.popleft())
        if cache is None or not batch:
            return batch
        try:
            kept = cache.plan(batch, active)
        except Exception:  # forks save prefill; a planning failure must not lose requests
            log.exception("planning prompt-cache forks failed; admitting without forking")
            return batch
        for s in set(batch) - set(kept):
            s.status = RequestStatus.DEFERRED
        return kept

    def order(self, batch: list[RequestState]) -> None:
        """Sort a batch for prefill, in place: a fork's lead first (its followers wait for
        it), then by the prompt tokens left to prefill. mlx-lm prefills inserted prompts in
        FIFO groups of ``prefill_batch_size`` right-padded to the longest, so grouping
        similar lengths wastes less compute on padding (and serves short prompts first,
        which lowers the median time to first token)."""
        leads = self.cache.leads if self.cache is not None else (lambda s: False)
        batch.sort(key=lambda s: (not leads(s), len(s.job.prompt_tokens) - s.cached_tokens))

    def runs_solo(self, batch: list[RequestState], active: int) -> bool:
        """True when ``batch`` is one request arriving at an otherwise idle engine."""
        if not self.solo_decode or len(batch) != 1 or active or self.waiting:
            return False
        cache = self.cache
        return cache is None or (not cache.deferred and not cache.leads(batch[0]))
