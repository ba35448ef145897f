"""Which waiting requests start, and when: the bounded queue, queue timeouts, admission order.

The engine asks the scheduler once per step for the requests to admit (:meth:`take`): up to
the free batch slots and while their KV reservations fit the budget (memory_plan.py; the
first request that does not fit waits, and those behind it with it, so a long request is
not overtaken forever), minus those the cache scheduler defers behind a fork's lead (a wave
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
        #: KV bytes the admitted requests may reserve together (None: rows alone bound it).
        self.kv_budget: int | None = None
        #: Reserved by the running requests after the last step, and the most at admission.
        self.kv_reserved = 0
        self.kv_reserved_peak = 0
        #: Requests that waited for KV memory (with free batch slots) before admission.
        self.kv_waits = 0

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
        reserved = sum(s.job.kv_bytes for s in active)
        budget = self.kv_budget
        while self.waiting and len(batch) < free:
            need = self.waiting[0].job.kv_bytes
            # With nothing running a request always starts: one the budget can never hold is
            # refused before it is queued (jobs.py), so this only guards against deadlock.
            if budget is not None and reserved + need > budget and (active or batch):
                head = self.waiting[0]
                if not head.kv_waited:
                    head.kv_waited = True
                    self.kv_waits += 1
                break
            batch.append(self.waiting.popleft())
            reserved += need
        kept = self._plan_forks(batch, active)
        # A deferred follower holds no KV until it starts: the peak counts the kept ones.
        admitted = reserved - sum(s.job.kv_bytes for s in batch if s not in kept)
        self.kv_reserved_peak = max(self.kv_reserved_peak, admitted)
        return kept

    def _plan_forks(
        self, batch: list[RequestState], active: Collection[RequestState]
    ) -> list[RequestState]:
        """``batch`` minus the fork followers the cache scheduler defers (marked DEFERRED)."""
        cache = self.cache
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

    def recount(self, active: Collection[RequestState]) -> None:
        """After a step: the reservations of the requests still running (stats only)."""
        self.kv_reserved = sum(s.job.kv_bytes for s in active)

    def kv_stats(self) -> dict[str, int]:
        """Reserved KV bytes now and at most, and the requests that waited for them."""
        return {
            "kv_reserved_bytes": self.kv_reserved,
            "kv_reserved_peak_bytes": self.kv_reserved_peak,
            "kv_waits": self.kv_waits,
        }

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
