"""One request as the engine thread tracks it, and the states it moves through.

QUEUED (submitted, then in the scheduler's queue) -> DEFERRED (held back until a fork's lead
has prefilled the shared prefix; then QUEUED again) -> RUNNING (in the BatchGenerator) or SOLO
(decoded alone, solo.py; a handover makes it RUNNING) -> FINISHED, CANCELLED (the caller went
away, or the engine was closed), FAILED (an error was delivered) or REJECTED (queue full or
queue timeout).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from .protocol import Final, Job, Sink, TokenScores
from .stop_strings import StopMatcher

__all__ = ["RequestState", "RequestStatus"]


class RequestStatus(enum.Enum):
    """Where a request is in the engine."""

    QUEUED = "queued"
    DEFERRED = "deferred"
    RUNNING = "running"
    SOLO = "solo"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"
    REJECTED = "rejected"


_ENDED = frozenset(
    {RequestStatus.FINISHED, RequestStatus.CANCELLED, RequestStatus.FAILED, RequestStatus.REJECTED}
)


@dataclass(eq=False, slots=True)
class RequestState:
    """One request as the engine tracks it (engine-thread fields are touched by it alone)."""

    job: Job
    sink: Sink
    submitted_at: float = field(default_factory=time.perf_counter)
    # Set by the caller side (any thread): the engine drops the request at its next step.
    cancelled: bool = False
    # Engine-thread state.
    status: RequestStatus = RequestStatus.QUEUED
    uid: int | None = None
    admitted_at: float | None = None
    first_token_at: float | None = None
    completion_tokens: int = 0
    cache: Any = None  # its prompt-cache Hit, until the generator takes it
    kv_waited: bool = False  # it waited for KV memory at least once (counted once)
    cached_tokens: int = 0
    detokenizer: Any = None
    stops: StopMatcher | None = None
    held: list[str] = field(default_factory=list)  # text for a sink that is not streaming
    scores: list[TokenScores] = field(default_factory=list)  # logprobs not yet delivered

    @property
    def done(self) -> bool:
        """True once the request ended (nothing more is delivered for it)."""
        return self.status in _ENDED

    def end(self, status: RequestStatus) -> None:
        """Mark the request ended with ``status`` (one of the terminal ones)."""
        assert status in _ENDED, status
        self.status = status

    def final(self, text: str, finish_reason: str, now: float) -> Final:
        """The Final record for this request ending now (with the scores not yet sent)."""
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
            scores=tuple(self.scores),
        )
