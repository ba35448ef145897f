"""EngineCore: one engine step, and every request's way through it (engine thread only).

:meth:`EngineCore.step` is the three stages of vLLM's ``EngineCore.step()``:

- **schedule** (:meth:`_admit`): the scheduler picks the waiting requests to start; each
  checks out its prompt-cache hit; a lone request at an idle engine starts in the solo lane,
  any other goes into the batch, and an arrival first hands a solo request over;
- **execute**: one solo step (:meth:`_solo_step`) or one ``BatchGenerator.next()``
  (:meth:`_batch_step`), timed into the counters;
- **update**: each token is routed to its request (output.py); a finished request's KV cache
  returns to the prompt cache; rows that ended on a stop string, or whose caller left, are
  removed from the generator before the next step (:meth:`tidy`).

A failure is contained where it happens: a request that breaks fails alone; a step that
raises fails the requests in it, and the generator is rebuilt; the engine keeps serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from ...errors import OverloadedError, ProviderAPIError
from .batch import Batch, Insert
from .cache_scheduler import CacheScheduler
from .counters import EngineCounters
from .model_setup import ModelSetup
from .output import OutputProcessor, token_scores
from .protocol import Sink
from .request_state import RequestState, RequestStatus
from .scheduler import Scheduler
from .solo import SoloLane

__all__ = ["EngineCore"]

log = logging.getLogger(__name__)

_PROVIDER = "mlx"


class EngineCore:
    """The model's parts and the requests the engine holds: ``active`` maps a uid (the
    generator's, or a negative one in the solo lane) to its request."""

    def __init__(
        self,
        setup: ModelSetup,
        scheduler: Scheduler,
        batch: Batch,
        solo: SoloLane,
        counters: EngineCounters,
    ) -> None:
        assert scheduler.cache is not None, "the scheduler plans with the prompt cache"
        self.setup = setup
        self.scheduler = scheduler
        self.batch = batch
        self.solo = solo
        self.cache: CacheScheduler = scheduler.cache
        self.counters = counters
        self.output = OutputProcessor(counters)
        self.active: dict[int, RequestState] = {}
        self._to_remove: dict[int, RequestState] = {}

    @property
    def busy(self) -> bool:
        """True while some request is admitted or waiting."""
        return bool(self.active or self.scheduler.waiting)

    # ------------------------------------------------------------------ commands
    def enqueue(self, state: RequestState) -> None:
        """A submitted request joins the queue (or is refused when it is full)."""
        self.counters.submitted += 1
        if state.cancelled:
            state.end(RequestStatus.CANCELLED)
            self.counters.cancelled += 1
            return
        why = self.scheduler.enqueue(state, len(self.active))
        if why is not None:
            self._reject(state, why)

    def drop(self, state: RequestState) -> None:
        """A caller cancelled: the caller is gone, so nothing is delivered."""
        if state.done:
            return
        state.end(RequestStatus.CANCELLED)
        self.counters.cancelled += 1
        self.cache.dropped(state)
        if state.uid is None:
            self.scheduler.discard(state)
        elif state is self.solo.state:
            self._end_solo()  # no generator holds it: its cache goes back at once
        else:
            self.active.pop(state.uid, None)
            self._to_remove[state.uid] = state

    # ------------------------------------------------------------------ the step
    def tidy(self, now: float) -> None:
        """Before a step: reject requests past their queue timeout, remove dropped rows."""
        for state in self.scheduler.expired(now):
            timeout = self.scheduler.options.queue_timeout_s
            self._reject(state, f"request waited over queue_timeout_s={timeout:g} s for a slot")
        self._flush()
        self.flush_removals()

    def step(self, started: float) -> None:
        """Schedule, execute, update: one solo step or one batch step."""
        self._admit(started)
        if self.solo.active:
            self._solo_step()
        elif self.active:
            self._batch_step()
        else:
            return
        self.counters.busy_s += time.perf_counter() - started  # before delivery: callers see it
        self._flush()
        self.flush_removals()
        self.scheduler.recount(self.active.values())

    def flush_removals(self) -> None:
        """Remove ended or dropped rows from the generator; their caches go back."""
        if not self._to_remove:
            return
        removed, self._to_remove = self._to_remove, {}
        caches = self.batch.remove(list(removed), return_caches=self.cache.store.enabled)
        for uid in removed:  # a request that just finished has handed its cache back
            cache, tokens = caches.get(uid, (None, None))
            self._returned(uid, tokens, cache)

    # ------------------------------------------------------------------ schedule
    def _admit(self, now: float) -> None:
        if self.solo.active and self.scheduler.waiting:
            self._solo_to_batch()  # the lone request joins the batch ahead of the arrivals
        admitted = [s for s in self.scheduler.take(self.active.values()) if self._lookup(s)]
        self.scheduler.order(admitted)
        if admitted and self.scheduler.runs_solo(admitted, len(self.active)):
            try:
                self._start_solo(admitted[0], now)
            except Exception as exc:  # noqa: BLE001 - fails this request only
                state = admitted[0]
                self.solo.end()
                if state.uid is not None:  # registered: its cache lease goes back
                    self.active.pop(state.uid, None)
                    self._returned(state.uid, None, None)
                self._fail(state, _as_provider_error(exc, "could not start the request"))
        elif admitted:
            try:
                self._insert(admitted, now)
            except Exception:  # noqa: BLE001 - isolate the request that broke the insert
                for state in admitted:
                    try:
                        self._insert([state], now)
                    except Exception as exc:  # noqa: BLE001
                        self._fail(state, _as_provider_error(exc, "could not start the request"))
        self._flush()  # failed lookups and starts are delivered even when nothing runs

    def _lookup(self, state: RequestState) -> bool:
        """Take the request's cache hit; False (and the request failed) if that broke."""
        try:
            hit = self.cache.checkout(state)
        except Exception as exc:  # noqa: BLE001 - fails this request only
            self._fail(state, _as_provider_error(exc, "the prompt cache lookup failed"))
            return False
        state.cache, state.cached_tokens = hit, 0 if hit is None else hit.n
        return True

    def _insert(self, states: list[RequestState], now: float) -> None:
        """Insert ``states`` into the batch (raises only if the insert itself failed; a request
        whose registration then fails is failed and removed alone)."""
        samplers = self.setup.samplers
        entries = [
            Insert(
                prompt=s.job.prompt_tokens[s.cached_tokens :],
                max_tokens=s.job.max_tokens,
                sampler=samplers.get(s.job.sampling, s.job.seed),
                cache=None if s.cache is None else s.cache.cache,
                cache_tokens=None if s.cache is None else s.cache.tokens,
                processors=_processors(s),
                logprobs=s.job.top_logprobs is not None,
            )
            for s in states
        ]
        for state, uid in zip(states, self.batch.insert(entries)):
            try:
                self._register(state, uid, now, RequestStatus.RUNNING)
            except Exception as exc:  # noqa: BLE001 - fails this request only
                self._to_remove[uid] = state
                self._fail(state, _as_provider_error(exc, "could not start the request"))

    def _start_solo(self, state: RequestState, now: float) -> None:
        hit = state.cache
        sampler = self.setup.samplers.get(state.job.sampling, state.job.seed)
        uid = self.solo.start(
            state,
            sampler,
            None if hit is None else hit.cache,
            state.cached_tokens,
            _processors(state),
        )
        self._register(state, uid, now, RequestStatus.SOLO)
        self.counters.solo_requests += 1

    def _register(self, state: RequestState, uid: int, now: float, status: RequestStatus) -> None:
        """The request was admitted as ``uid`` (its prompt-cache hit now belongs to the
        generator or the solo lane)."""
        state.uid = uid
        state.status = status
        self.cache.register(state, uid, state.cache)
        state.cache = None
        state.admitted_at = now
        self.output.start(state, self.setup.tokenizer.detokenizer)
        self.active[uid] = state
        self.counters.prompt_tokens += len(state.job.prompt_tokens)

    def _solo_to_batch(self) -> None:
        """Hand the solo request to the batch, which continues it exactly."""
        solo = self.solo
        assert solo.decode is not None and solo.state is not None
        if solo.decode.pending:  # read the token in flight without feeding it back
            self._solo_step(queue_next=False)
            if not solo.active:
                return  # that token ended it (or its caller went away)
        state = solo.state
        assert state is not None and state.uid is not None
        old = state.uid
        try:
            uid, kv = solo.hand_over(self.batch)
        except Exception as exc:  # noqa: BLE001 - fails this request only
            solo.end()
            self.active.pop(old, None)
            self._returned(old, None, None)
            self._fail(state, _as_provider_error(exc, "moving the request into the batch failed"))
            return
        del self.active[old]
        state.uid, state.status = uid, RequestStatus.RUNNING
        self.active[uid] = state
        self.cache.moved(old, uid, kv=kv)
        self.counters.solo_handovers += 1

    # ------------------------------------------------------------------ execute + update
    def _solo_step(self, *, queue_next: bool = True) -> None:
        """One prefill chunk or one token of the solo request; counted like a batch step."""
        state = self.solo.state
        assert state is not None
        self.setup.padding.use(False)
        c = self.counters
        t0 = time.perf_counter()
        try:
            out = self.solo.step(queue_next=queue_next)
        except Exception as exc:
            log.exception("the solo decode step failed")
            self._end_solo(keep_cache=False)
            self._fail(state, _as_provider_error(exc, "the decode step failed"))
            return
        now = time.perf_counter()
        c.model_step_s += now - t0
        c.steps += 1
        c.prefill_tokens += out.prefilled
        if out.token is None:
            c.prefill_s += now - t0
            return
        c.decode_s += now - t0
        c.decode_steps += 1
        c.decode_rows += 1
        c.generated_tokens += 1
        try:
            ended = self._route(state, out.token, out.finish, now, out.logprobs)
        except Exception as exc:  # noqa: BLE001 - the request fails alone
            self._end_solo(keep_cache=False)
            self._fail(state, _as_provider_error(exc, "processing a generated token failed"))
            return
        if ended:
            self._end_solo()

    def _batch_step(self) -> None:
        self.setup.padding.use(True)
        c = self.counters
        t0 = time.perf_counter()
        try:
            step = self.batch.step()
        except Exception as exc:
            log.exception("BatchGenerator.next() failed; failing %d requests", len(self.active))
            self._fail_active(_as_provider_error(exc, "the batch step failed"))
            self.batch.rebuild()
            return
        now = time.perf_counter()
        c.model_step_s += now - t0
        c.steps += 1
        c.prefill_tokens += step.prompt_tokens
        c.prefill_s += step.prompt_time
        c.decode_s += step.decode_time
        if step.responses:
            c.decode_steps += 1
            c.decode_rows += len(step.responses)
        try:
            self.cache.after_step(self.batch, step.prompt_responses)
        except Exception:  # the cache is an optimisation: never fail a request for it
            log.exception("following prefill progress for the prompt cache failed")
        for r in step.responses:
            if r.finish_reason is not None:
                self._returned(r.uid, r.all_tokens, r.prompt_cache)
            state = self.active.get(r.uid)
            if state is None:
                continue  # dropped while its token was in flight
            try:
                if self._route(state, r.token, r.finish_reason, now, r.logprobs):
                    del self.active[r.uid]
                    if r.finish_reason is None:
                        self._to_remove[r.uid] = state  # ended on a stop string
            except Exception as exc:  # noqa: BLE001 - one broken request fails alone
                self.active.pop(r.uid, None)
                if r.finish_reason is None:
                    self._to_remove[r.uid] = state
                self._fail(state, _as_provider_error(exc, "processing a generated token failed"))
        c.generated_tokens += len(step.responses)

    def _route(
        self, state: RequestState, token: int, finish: str | None, now: float, logprobs: Any
    ) -> bool:
        """Route one token; True when the request ended. A whole-answer request whose event
        loop closed is dropped instead (False: the drop already removed it). ``logprobs`` is
        the row the token was sampled from (read only when the request asked for them)."""
        job = state.job
        if finish is not None and job.grammar is not None and job.grammar.error is not None:
            raise RuntimeError(f"the grammar matcher failed: {job.grammar.error}")
        scores = None
        if job.top_logprobs is not None and finish != "stop":  # EOS's text is not content
            scores = token_scores(logprobs, token, job.top_logprobs)
        if self.output.route(state, token, finish, now, scores):
            return True
        if self.output.abandoned(state):
            self.drop(state)
        return False

    def _end_solo(self, *, keep_cache: bool = True) -> None:
        """The solo request ended (or was dropped): its KV cache goes to the prompt cache."""
        state, tokens, cache = self.solo.end()
        if state is None or state.uid is None:
            return
        self.active.pop(state.uid, None)
        keep = keep_cache and self.cache.store.enabled
        self._returned(state.uid, tokens if keep else None, cache)

    # ------------------------------------------------------------------ endings
    def _returned(self, uid: int, tokens: Any, cache: Any) -> None:
        self.batch.forget(uid)
        try:
            self.cache.returned(uid, tokens, cache)
        except Exception:  # the cache is an optimisation: never fail a request for it
            log.exception("storing a prompt cache failed")

    def _reject(self, state: RequestState, why: str) -> None:
        state.end(RequestStatus.REJECTED)
        self.counters.rejected += 1
        self.output.deliver(state, OverloadedError(why, provider=_PROVIDER))

    def _fail(self, state: RequestState, exc: BaseException) -> None:
        self.cache.dropped(state)
        state.end(RequestStatus.FAILED)
        self.counters.errors += 1
        self.output.deliver(state, exc)

    def _fail_active(self, exc: ProviderAPIError) -> None:
        active, self.active = self.active, {}
        self._to_remove = {}
        self.cache.fail_all()
        for state in active.values():
            self._fail(state, _copy_error(exc))
        self._flush()

    def _flush(self) -> None:
        for sink in self.output.flush():  # their event loop is closed: nobody is listening
            self._orphan(sink)

    def _orphan(self, sink: Sink) -> None:
        for state in list(self.active.values()):
            if state.sink is sink:
                self.drop(state)

    def shutdown(
        self,
        pending_error: Callable[[], BaseException],
        late: Sequence[RequestState],
        *,
        orderly: bool,
    ) -> None:
        """Fail every request still held (and those that raced in) with a fresh
        ``pending_error()`` each, and release the generator."""
        pending = list(self.scheduler.waiting) + list(self.active.values())
        pending += self.cache.deferred_states() + list(late)
        self.scheduler.waiting.clear()
        self.active.clear()
        self.solo.end()
        status = RequestStatus.CANCELLED if orderly else RequestStatus.FAILED
        for state in pending:
            if not state.done:
                state.end(status)
                self.output.deliver(state, pending_error())
        self.output.flush()
        self.batch.close()
        self.cache.fail_all()  # every lease and fork is gone with the generator
        self.cache.store.clear()  # the stored KV caches go with the model


def _as_provider_error(exc: BaseException, what: str) -> ProviderAPIError:
    """``exc`` as the ProviderAPIError a caller gets (the cause kept)."""
    err = ProviderAPIError(f"{what}: {type(exc).__name__}: {exc}", provider=_PROVIDER)
    err.__cause__ = exc
    return err


def _copy_error(exc: ProviderAPIError) -> ProviderAPIError:
    err = ProviderAPIError(str(exc), provider=exc.provider)
    err.__cause__ = exc.__cause__
    return err


def _processors(state: RequestState) -> tuple[Any, ...]:
    """The request's logits processors: its grammar, if it has one."""
    return () if state.job.grammar is None else (state.job.grammar,)
