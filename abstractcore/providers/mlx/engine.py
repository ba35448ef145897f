"""The MLX engine: one thread that owns the model and steps mlx-lm's BatchGenerator.

MLX streams are thread-bound, so this thread loads the model, evaluates its weights, builds
the BatchGenerator and makes every MLX call; callers only exchange Python ints and strings
with it through an inbox (``submit``/``cancel``) and per-request sinks. Each loop turn
drains the inbox, drops cancelled and expired requests, admits waiting ones up to
``max_batch_size``, calls ``BatchGenerator.next()`` once and routes every token to its
request (streaming detokenizer, stop strings, EOS, max tokens). Idle, it blocks on the inbox.

A request that arrives at an idle engine runs solo (solo.py: no batch bookkeeping, ~2%
faster per token); the next arrival hands it over to the BatchGenerator mid-flight, where it
continues from the same KV cache.
"""

from __future__ import annotations

import collections
import concurrent.futures
import gc
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import (
    AbstractCoreError,
    GenerationCancelledError,
    OverloadedError,
    ProviderAPIError,
    ProviderUnavailableError,
)
from .cache_scheduler import CacheScheduler
from .requests import (
    EngineCounters,
    Job,
    Outbox,
    RequestState,
    Sink,
    StopMatcher,
    put_threadsafe,
)
from .row_padding import RowPadding
from .solo import SoloDecode

__all__ = ["EngineClosedError", "MLXEngine"]

log = logging.getLogger(__name__)

_PROVIDER = "mlx"


class EngineClosedError(ProviderUnavailableError):
    """The engine was closed (or died) and takes no more requests."""


class MLXEngine:
    """Owns the engine thread; ``submit`` from any thread, results arrive on the request's sink."""

    def __init__(
        self,
        model_path: Path,
        *,
        max_batch_size: int = 32,
        prefill_batch_size: int = 8,
        prefill_step_size: int = 512,
        max_queue: int = 1024,
        queue_timeout_s: float | None = None,
        prompt_cache_bytes: int | None = None,
        prefix_cache: bool = True,
        share_prefix_across_keys: bool = False,
        solo_decode: bool = True,
        pad_rows: bool = True,
        fast_cpu_ops: bool = True,
        name: str = "abstractcore-mlx-engine",
    ) -> None:
        self.model_path = Path(model_path)
        self.max_batch_size = max_batch_size
        self.prefill_batch_size = min(prefill_batch_size, max_batch_size)
        self.prefill_step_size = prefill_step_size
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        #: Run a request that is alone in the engine without the batch machinery (solo.py);
        #: switched off at load for models whose KV cache cannot be merged into a batch.
        self.solo_decode = solo_decode
        #: Pad the rows of the model's dense products to counts the BLAS runs faster
        #: (row_padding.py); calibrated at load, on the CPU only.
        self.pad_rows = pad_rows
        self.row_padding: RowPadding | None = None
        self._padded = False  # whether the model's layers pad now (batch steps; solo: no)
        #: Run decode attention and SwiGLU through cpu_ops.py (CPU only); what it replaced.
        self.fast_cpu_ops = fast_cpu_ops
        self.cpu_ops: list[str] = []
        self.tokenizer: Any = None
        self.context_length: int | None = None
        self.vocab_size: int = 0

        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._closed = False  # set by callers: no new submissions
        self._dead: BaseException | None = None  # set by the engine thread when it stops
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._started_at = time.perf_counter()
        self.counters = EngineCounters()
        self._cache_options = (prompt_cache_bytes, prefix_cache, share_prefix_across_keys)
        #: Prompt caching (built with the model; engine thread only, except its stats).
        self.prompt_cache: CacheScheduler | None = None

        # Engine-thread state.
        self._model: Any = None
        self._stream: Any = None
        self._gen: Any = None
        self._samplers: Any = None
        self._waiting: collections.deque[RequestState] = collections.deque()
        self._active: dict[int, RequestState] = {}
        self._to_remove: dict[int, RequestState] = {}
        self._solo: SoloDecode | None = None
        self._solo_state: RequestState | None = None
        self._solo_uids = itertools.count(-1, -1)  # never collide with BatchGenerator's uids
        self._eos: frozenset[int] = frozenset()
        self._calls: list[tuple[Callable[[MLXEngine], Any], concurrent.futures.Future[Any]]] = []
        self._outbox = Outbox()
        self._stop_requested = False

    # ------------------------------------------------------------------ caller side
    def start(self) -> None:
        """Start the thread and wait until the model is loaded; re-raise a loading error."""
        self._thread.start()
        self._ready.wait()
        if self._load_error is not None:
            self._join(None)
            err = self._load_error
            if isinstance(err, AbstractCoreError):
                raise err
            raise ProviderAPIError(
                f"loading the MLX model from {self.model_path} failed: {err}", provider=_PROVIDER
            ) from err

    def submit(self, job: Job, sink: Sink) -> RequestState:
        """Queue a job; its text, Final or error arrive on ``sink``."""
        self._check_open()
        state = RequestState(job=job, sink=sink)
        self._inbox.put(("submit", state))
        # The engine may have stopped between the check and the put: fail it ourselves
        # (a second terminal item, if the engine also failed it, is never read).
        if self._closed or self._dead is not None:
            put_threadsafe(sink, self._closed_error())
        return state

    def cancel(self, state: RequestState) -> None:
        """Drop a request (never blocks); the engine removes it before its next step."""
        if not state.cancelled:
            state.cancelled = True
            self._inbox.put(("cancel", state))

    def call(self, fn: Callable[[MLXEngine], Any], timeout: float | None = None) -> Any:
        """Run ``fn(engine)`` on the engine thread between two steps and return its result."""
        self._check_open()
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._inbox.put(("call", (fn, fut)))
        return fut.result(timeout)

    def stats(self) -> dict[str, Any]:
        """A snapshot of the engine's counters (see MLXProvider.stats)."""
        cache = self.prompt_cache
        stats = self.counters.as_dict(
            active=len(self._active),
            queued=len(self._waiting) + (cache.deferred if cache is not None else 0),
            wall_s=time.perf_counter() - self._started_at,
        )
        if cache is not None:
            stats["prompt_cache"] = cache.store.stats()
        stats["row_padding"] = {} if self.row_padding is None else self.row_padding.padded()
        stats["cpu_ops"] = list(self.cpu_ops)
        return stats

    def snapshot(self, timeout: float | None = 30.0) -> dict[str, Any]:
        """What the engine thread holds right now, read between two steps (diagnostics)."""

        def probe(engine: MLXEngine) -> dict[str, Any]:
            gen = engine._gen
            uids = list(gen._generation_batch.uids) + list(gen._prompt_batch.uids)
            uids += [seq[0] for seq in gen._unprocessed_sequences]
            return {
                "generator_uids": uids,
                "cache_bytes": int(gen.prompt_cache_nbytes),
                "solo_uid": None if engine._solo_state is None else engine._solo_state.uid,
                "active": len(engine._active),
                "waiting": len(engine._waiting),
                "steps": engine.counters.steps,
            }

        result: dict[str, Any] = self.call(probe, timeout)
        return result

    @property
    def alive(self) -> bool:
        """True while the engine thread runs and accepts work."""
        return self._thread.is_alive() and not self._closed and self._dead is None

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop the thread (pending requests get GenerationCancelledError) and join it."""
        if not self._closed:
            self._closed = True
            self._inbox.put(("stop", None))
        if threading.current_thread() is not self._thread:
            self._join(timeout)

    def _join(self, timeout: float | None) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive() or self._thread.native_id is None:
            return
        # MLX keeps per-thread state (the random key sequence) whose C++ destructor takes the
        # GIL after Thread.join() has returned; if the interpreter is finalizing by then, the
        # process aborts ("terminate called without an active exception"). Wait for the OS
        # thread to be gone (Linux: its /proc entry), so closing right before exit is safe.
        task = f"/proc/self/task/{self._thread.native_id}"
        deadline = time.monotonic() + 2.0
        while os.path.exists(task) and time.monotonic() < deadline:
            time.sleep(0.001)

    def _check_open(self) -> None:
        if self._closed or self._dead is not None:
            raise self._closed_error()

    def _pending_error(self) -> BaseException:
        if isinstance(self._dead, _Stop):
            return GenerationCancelledError(
                "the MLX provider was closed before this request finished"
            )
        return self._closed_error()

    def _closed_error(self) -> ProviderAPIError | EngineClosedError:
        if self._dead is not None and not isinstance(self._dead, _Stop):
            return ProviderAPIError(
                f"the MLX engine thread died: {self._dead!r}", provider=_PROVIDER
            )
        return EngineClosedError("the MLX provider is closed", provider=_PROVIDER)

    # ------------------------------------------------------------------ engine thread
    def _main(self) -> None:
        try:
            self._load()
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            self._load_error = exc
            self._dead = exc
            self._ready.set()
            return
        self._ready.set()
        reason: BaseException = _Stop()
        try:
            self._loop()
        except BaseException as exc:
            log.exception("MLX engine thread died")
            reason = exc
        finally:
            self._shutdown(reason)

    def _load(self) -> None:
        from .loading import load_model, preload_blas

        preload_blas()
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache

        from . import row_padding
        from .prompt_cache import cache_support
        from .sampling import SamplerCache

        self._stream = mx.new_stream(mx.default_device())
        with mx.stream(self._stream):
            model, tokenizer = load_model(self.model_path)
            mx.eval(model.parameters())
            if self.pad_rows and mx.default_device() == mx.cpu:
                t0 = time.perf_counter()
                self.row_padding = row_padding.calibrate(model, self.max_batch_size)
                n = row_padding.apply(model, self.row_padding)
                self._padded = True
                log.info(
                    "row padding for %d dense layers (%.1f s): %s", n,
                    time.perf_counter() - t0, self.row_padding.padded() or "none",
                )  # fmt: skip
            if self.fast_cpu_ops and mx.default_device() == mx.cpu:
                from . import cpu_ops

                self.cpu_ops = cpu_ops.install(model)
                cpu_ops.enable_on_this_thread()
        self._model = model
        self.tokenizer = tokenizer
        args = getattr(model, "args", None)
        self.context_length = getattr(args, "max_position_embeddings", None)
        self.vocab_size = int(getattr(args, "vocab_size", 0) or len(tokenizer))
        self._samplers = SamplerCache(self.vocab_size)
        self._eos = frozenset(int(t) for t in tokenizer.eos_token_ids)
        self._gen = self._new_generator()
        reason = cache_support(make_prompt_cache(model))
        if reason is not None:
            log.info("prompt caching and solo decoding are off for %s: %s", self.model_path, reason)
            self.solo_decode = False  # a handover merges the solo cache into the batch
        self.prompt_cache = self._new_prompt_cache(model, reason)

    def _new_prompt_cache(self, model: Any, reason: str | None) -> CacheScheduler:
        from mlx_lm.models.cache import make_prompt_cache

        from .prompt_cache import PromptCacheStore, default_budget_bytes

        budget, prefix, share = self._cache_options
        store = PromptCacheStore(
            default_budget_bytes() if budget is None else budget,
            prefix_cache=prefix,
            share_prefix_across_keys=share,
            disabled_reason=reason,
        )
        layers = len(make_prompt_cache(model))
        return CacheScheduler(
            store, self._requeue, model_id=str(self.model_path), num_layers=layers
        )

    def _requeue(self, states: list[RequestState]) -> None:
        """Deferred fork followers go back to the front of the queue, in order."""
        self._waiting.extendleft(reversed(states))

    def _new_generator(self) -> Any:
        from mlx_lm.generate import BatchGenerator

        from . import greedy_decode

        eos = [[t] for t in sorted(self.tokenizer.eos_token_ids)]
        gen = BatchGenerator(
            self._model,
            stop_tokens=eos,
            completion_batch_size=self.max_batch_size,
            prefill_batch_size=self.prefill_batch_size,
            prefill_step_size=self.prefill_step_size,
            stream=self._stream,
        )
        greedy_decode.install(gen)
        return gen

    def _loop(self) -> None:
        inbox = self._inbox
        perf = time.perf_counter
        while True:
            if not self._active and not self._waiting:
                self._handle(*inbox.get())  # idle: block until there is work
            while True:
                try:
                    cmd = inbox.get_nowait()
                except queue.Empty:
                    break
                self._handle(*cmd)
            if self._stop_requested:
                return
            t0 = perf()  # after any idle wait: busy_s counts only time with work
            self._expire(t0)
            self._flush_removals()
            self._run_calls()
            self._admit(t0)
            if self._solo is not None:
                self._solo_step(t0)
            elif self._active:
                self._step(t0)

    def _handle(self, kind: str, arg: Any) -> None:
        if kind == "submit":
            self._enqueue(arg)
        elif kind == "cancel":
            self._drop(arg)
        elif kind == "call":
            self._calls.append(arg)
        elif kind == "stop":
            self._stop_requested = True

    def _enqueue(self, state: RequestState) -> None:
        self.counters.submitted += 1
        if state.cancelled:
            state.done = True
            self.counters.cancelled += 1
        elif len(self._waiting) >= self.max_queue + max(0, self.max_batch_size - len(self._active)):
            # Requests that free batch slots will take at this step do not count as queued.
            self._reject(state, f"the MLX engine queue is full ({self.max_queue} waiting requests)")
        else:
            self._waiting.append(state)

    def _drop(self, state: RequestState) -> None:
        """A caller cancelled: the caller is gone, so nothing is delivered."""
        if state.done:
            return
        state.done = True
        self.counters.cancelled += 1
        if self.prompt_cache is not None:
            self.prompt_cache.dropped(state)
        if state.uid is None:
            try:
                self._waiting.remove(state)
            except ValueError:
                pass  # still in the inbox (_enqueue sees the flag), or deferred by a fork
        elif state is self._solo_state:
            self._end_solo()  # no generator holds it: its cache goes back at once
        else:
            self._active.pop(state.uid, None)
            self._to_remove[state.uid] = state

    def _expire(self, now: float) -> None:
        timeout = self.queue_timeout_s
        if timeout is None:
            return
        waiting = self._waiting
        while waiting and now - waiting[0].submitted_at > timeout:
            state = waiting.popleft()
            self._reject(state, f"request waited over queue_timeout_s={timeout:g} s for a slot")
        self._flush_outbox()

    def _flush_removals(self) -> None:
        if not self._to_remove:
            return
        removed, self._to_remove = self._to_remove, {}
        sched = self.prompt_cache
        keep = sched is not None and sched.store.enabled
        caches = self._gen.remove(list(removed), return_prompt_caches=keep)
        if sched is not None:
            for uid in removed:  # a request that just finished has handed its cache back
                cache, tokens = caches.get(uid, (None, None))
                self._returned(sched, uid, tokens, cache)

    def _returned(self, sched: CacheScheduler, uid: int, tokens: Any, cache: Any) -> None:
        try:
            sched.returned(uid, tokens, cache)
        except Exception:  # the cache is an optimisation: never fail a request for it
            log.exception("storing a prompt cache failed")

    def _run_calls(self) -> None:
        calls, self._calls = self._calls, []
        for fn, fut in calls:
            try:
                fut.set_result(fn(self))
            except BaseException as exc:  # noqa: BLE001 - delivered to the caller
                fut.set_exception(exc)

    def _admit(self, now: float) -> None:
        sched = self.prompt_cache
        if self._solo is not None and self._waiting:
            self._solo_to_batch()  # the lone request joins the batch ahead of the arrivals
        free = self.max_batch_size - len(self._active) - (sched.deferred if sched else 0)
        if free <= 0 or not self._waiting:
            return
        batch: list[RequestState] = []
        while self._waiting and len(batch) < free:
            batch.append(self._waiting.popleft())
        if sched is not None:
            batch = [s for s in sched.plan(batch, self._active.values()) if self._lookup(s)]
        # mlx-lm prefills inserted prompts in FIFO groups of prefill_batch_size, right-padded
        # to the longest: grouping similar lengths wastes less compute on padding (and serves
        # short prompts first, which lowers the median time to first token).
        # A fork's lead goes first: its followers wait until it has prefilled their prefix.
        lead = self.prompt_cache.leads if self.prompt_cache is not None else lambda s: False
        batch.sort(key=lambda s: (not lead(s), len(s.job.prompt_tokens) - s.cached_tokens))
        if self._runs_solo(batch):
            try:
                self._start_solo(batch[0], now)
            except Exception as exc:  # noqa: BLE001 - fails this request only
                self._fail(batch[0], _as_provider_error(exc, "could not start the request"))
            self._flush_outbox()
            return
        try:
            self._insert(batch, now)
        except Exception:  # noqa: BLE001 - isolate the request that broke the insert
            for state in batch:
                try:
                    self._insert([state], now)
                except Exception as exc:  # noqa: BLE001
                    self._fail(state, _as_provider_error(exc, "could not start the request"))
        self._flush_outbox()

    def _lookup(self, state: RequestState) -> bool:
        """Take the request's cache hit; False (and the request failed) if that broke."""
        assert self.prompt_cache is not None
        try:
            hit = self.prompt_cache.checkout(state)
        except Exception as exc:  # noqa: BLE001 - fails this request only
            self._fail(state, _as_provider_error(exc, "the prompt cache lookup failed"))
            return False
        state.cache, state.cached_tokens = hit, 0 if hit is None else hit.n
        return True

    def _insert(self, batch: list[RequestState], now: float) -> None:
        hits = [s.cache for s in batch]  # prompt-cache Hits (or None)
        uids = self._gen.insert(
            [s.job.prompt_tokens[s.cached_tokens :] for s in batch],
            max_tokens=[s.job.max_tokens for s in batch],
            caches=[h.cache if h else None for h in hits] if any(hits) else None,
            all_tokens=[h.tokens if h else [] for h in hits] if any(hits) else None,
            samplers=[self._samplers.get(s.job.sampling, s.job.seed) for s in batch],
        )
        for state, uid in zip(batch, uids):
            self._register(state, uid, now)

    def _register(self, state: RequestState, uid: int, now: float) -> None:
        """The request was admitted as ``uid`` (its prompt-cache hit now belongs to the
        generator or the solo decode)."""
        state.uid = uid
        if self.prompt_cache is not None:
            self.prompt_cache.register(state, uid, state.cache)
        state.cache = None
        state.admitted_at = now
        state.detokenizer = self.tokenizer.detokenizer
        if state.job.stop:
            state.stops = StopMatcher(state.job.stop)
        self._active[uid] = state
        self.counters.prompt_tokens += len(state.job.prompt_tokens)

    # ------------------------------------------------------------------ solo decoding
    def _runs_solo(self, batch: list[RequestState]) -> bool:
        """True when ``batch`` is one request arriving at an otherwise idle engine."""
        if not self.solo_decode or len(batch) != 1 or self._active or self._waiting:
            return False
        sched = self.prompt_cache
        return sched is None or (not sched.deferred and not sched.leads(batch[0]))

    def _start_solo(self, state: RequestState, now: float) -> None:
        hit = state.cache
        job = state.job
        self._solo = SoloDecode(
            self._model,
            job.prompt_tokens,
            stream=self._stream,
            sampler=self._samplers.get(job.sampling, job.seed),
            max_tokens=job.max_tokens,
            prefill_step_size=self.prefill_step_size,
            cache=None if hit is None else hit.cache,
            cached=state.cached_tokens,
        )
        self._solo_state = state
        self._register(state, next(self._solo_uids), now)
        self.counters.solo_requests += 1

    def _solo_step(self, started: float) -> None:
        """One prefill chunk or one token of the solo request, then delivery."""
        self._solo_advance()
        self.counters.busy_s += time.perf_counter() - started  # before delivery, as in _step
        self._flush_outbox()
        self._flush_removals()

    def _solo_advance(self, *, queue_next: bool = True) -> None:
        """Step the solo request once and route its token; counted like a batch step."""
        solo, state = self._solo, self._solo_state
        assert solo is not None and state is not None
        self._use_row_padding(False)
        c = self.counters
        prompt_done = solo.prompt_done
        t0 = time.perf_counter()
        try:
            token = solo.step(queue_next=queue_next)
        except Exception as exc:
            log.exception("the solo decode step failed")
            self._end_solo(keep_cache=False)
            self._fail(state, _as_provider_error(exc, "the decode step failed"))
            return
        now = time.perf_counter()
        c.time_in_next_s += now - t0
        c.steps += 1
        c.prefill_tokens += solo.prompt_done - prompt_done
        if token is None:
            c.prefill_s += now - t0
            return
        c.decode_s += now - t0
        c.decode_steps += 1
        c.decode_rows += 1
        c.generated_tokens += 1
        # The same end rules as BatchGenerator: EOS ends with "stop" even on the last token.
        finish = "stop" if token in self._eos else None
        if finish is None and solo.generated >= state.job.max_tokens:
            finish = "length"
        try:
            ended = self._route(state, token, finish, now)
        except Exception as exc:  # noqa: BLE001 - the request fails alone
            self._end_solo(keep_cache=False)
            self._fail(state, _as_provider_error(exc, "processing a generated token failed"))
            return
        if ended:
            self._end_solo()

    def _end_solo(self, *, keep_cache: bool = True) -> None:
        """The solo request ended (or was dropped): its KV cache goes to the prompt cache."""
        solo, state = self._solo, self._solo_state
        self._solo = self._solo_state = None
        if solo is None or state is None or state.uid is None:
            return
        self._active.pop(state.uid, None)
        sched = self.prompt_cache
        if sched is not None:
            keep = keep_cache and sched.store.enabled
            self._returned(sched, state.uid, solo.tokens if keep else None, solo.cache)

    def _solo_to_batch(self) -> None:
        """Hand the solo request to the BatchGenerator, which continues it exactly."""
        solo, state = self._solo, self._solo_state
        assert solo is not None and state is not None and state.uid is not None
        if solo.pending:  # read the token in flight without feeding it back
            self._solo_advance(queue_next=False)
            if self._solo is None:
                return  # that token ended it (or its caller went away)
        old = state.uid
        self._solo = self._solo_state = None
        h = solo.handover()
        try:
            (uid,) = self._gen.insert(
                [h.prompt],
                max_tokens=[h.max_tokens],
                caches=None if h.cache is None else [h.cache],
                all_tokens=None if h.cache is None else [h.tokens],
                samplers=[solo.sampler],
            )
        except Exception as exc:  # noqa: BLE001 - fails this request only
            self._active.pop(old, None)
            if self.prompt_cache is not None:
                self._returned(self.prompt_cache, old, None, None)
            self._fail(state, _as_provider_error(exc, "moving the request into the batch failed"))
            return
        del self._active[old]
        state.uid = uid
        self._active[uid] = state
        if self.prompt_cache is not None:
            self.prompt_cache.moved(old, uid, kv=len(h.tokens))
        self.counters.solo_handovers += 1

    def _use_row_padding(self, on: bool) -> None:
        """Batch steps run the padded layers; solo steps the plain ones, since a single row
        is never padded and the padding layer's Python costs ~1.5 ms per step."""
        if self.row_padding is not None and on is not self._padded:
            from . import row_padding

            if on:
                row_padding.apply(self._model, self.row_padding)
            else:
                row_padding.remove(self._model)
            self._padded = on

    def _step(self, started: float) -> None:
        gen = self._gen
        self._use_row_padding(True)
        c = self.counters
        t0 = time.perf_counter()
        try:
            with gen.stats() as st:
                prompt_responses, responses = gen.next()
        except Exception as exc:
            log.exception("BatchGenerator.next() failed; failing %d requests", len(self._active))
            self._fail_active(_as_provider_error(exc, "the batch step failed"))
            self._rebuild_generator()
            c.busy_s += time.perf_counter() - started
            return
        now = time.perf_counter()
        c.time_in_next_s += now - t0
        c.steps += 1
        c.prefill_tokens += st.prompt_tokens
        c.prefill_s += st.prompt_time
        c.decode_s += st.decode_time
        if responses:
            c.decode_steps += 1
            c.decode_rows += len(responses)
        active = self._active
        sched = self.prompt_cache
        if sched is not None:
            sched.after_step(gen, prompt_responses)
        for r in responses:
            if r.finish_reason is not None and sched is not None:
                self._returned(sched, r.uid, r.all_tokens, r.prompt_cache)
            state = active.get(r.uid)
            if state is None:
                continue  # dropped while its token was in flight
            try:
                if self._route(state, r.token, r.finish_reason, now):
                    del active[r.uid]
                    if r.finish_reason is None:
                        self._to_remove[r.uid] = state  # ended on a stop string
            except Exception as exc:  # noqa: BLE001 - one broken request fails alone
                active.pop(r.uid, None)
                if r.finish_reason is None:
                    self._to_remove[r.uid] = state
                self._fail(state, _as_provider_error(exc, "processing a generated token failed"))
        c.generated_tokens += len(responses)
        c.busy_s += time.perf_counter() - started  # before delivery, so callers see it
        self._flush_outbox()
        self._flush_removals()

    def _route(self, state: RequestState, token: int, finish: str | None, now: float) -> bool:
        """Deliver one token's text; True when the request ended."""
        if state.first_token_at is None:
            state.first_token_at = now
        detok = state.detokenizer
        if finish == "stop":  # EOS (the only token-level stop): its text is not content
            return self._finish(state, _finalize(detok), "stop", now)
        state.completion_tokens += 1
        detok.add_token(token)
        text = detok.last_segment
        if finish == "length":
            return self._finish(state, text + _finalize(detok), "length", now)
        stops = state.stops
        if stops is not None:
            text, matched = stops.feed(text)
            if matched:
                self._finish_now(state, text, "stop", now)
                return True
        if text:
            self._emit(state, text)
        return False

    def _finish(self, state: RequestState, text: str, reason: str, now: float) -> bool:
        stops = state.stops
        if stops is not None:
            text, matched = stops.feed(text)
            if matched:
                reason = "stop"
            else:
                text += stops.flush()
        self._finish_now(state, text, reason, now)
        return True

    def _finish_now(self, state: RequestState, text: str, reason: str, now: float) -> None:
        if state.held:
            text = "".join(state.held) + text
            state.held.clear()
        state.done = True
        self.counters.finished += 1
        self._deliver(state, state.final(text, reason, now))

    def _deliver(self, state: RequestState, item: Any) -> None:
        self._outbox.put(state.sink, item)

    def _emit(self, state: RequestState, text: str) -> None:
        """A piece of text: sent now to a stream, held until the Final for a whole answer."""
        sink = state.sink
        if sink.streaming:
            self._outbox.put(sink, text)
            return
        state.held.append(text)
        if sink.loop is not None and sink.loop.is_closed():
            self._drop(state)  # nobody will read the answer (a stream finds out at flush)

    def _flush_outbox(self) -> None:
        for sink in self._outbox.flush():  # their event loop is closed: nobody is listening
            self._orphan(sink)

    def _orphan(self, sink: Sink) -> None:
        for state in list(self._active.values()):
            if state.sink is sink:
                self._drop(state)

    def _reject(self, state: RequestState, why: str) -> None:
        state.done = True
        self.counters.rejected += 1
        self._deliver(state, OverloadedError(why, provider=_PROVIDER))

    def _fail(self, state: RequestState, exc: BaseException) -> None:
        if self.prompt_cache is not None:
            self.prompt_cache.dropped(state)
        state.done = True
        self.counters.errors += 1
        self._deliver(state, exc)

    def _fail_active(self, exc: ProviderAPIError) -> None:
        active, self._active = self._active, {}
        self._to_remove = {}
        if self.prompt_cache is not None:
            self.prompt_cache.fail_all()
        for state in active.values():
            self._fail(state, _copy_error(exc))
        self._flush_outbox()

    def _rebuild_generator(self) -> None:
        old, self._gen = self._gen, None
        try:
            old.close()
        except Exception:
            log.debug("closing the failed BatchGenerator raised", exc_info=True)
        del old
        self._gen = self._new_generator()

    def _shutdown(self, reason: BaseException) -> None:
        """Fail whatever is pending, release the model; runs last on the engine thread."""
        self._dead = reason
        self._closed = True
        pending = list(self._waiting) + list(self._active.values())
        if self.prompt_cache is not None:
            pending += self.prompt_cache.deferred_states()
        self._waiting.clear()
        self._active.clear()
        self._solo = self._solo_state = None
        while True:  # requests that raced in after the loop stopped
            try:
                kind, arg = self._inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "submit":
                pending.append(arg)
            elif kind == "call":
                arg[1].set_exception(self._closed_error())
        for _fn, fut in self._calls:
            fut.set_exception(self._closed_error())
        self._calls = []
        for state in pending:
            if not state.done:
                state.done = True
                self._deliver(state, self._pending_error())
        self._flush_outbox()
        try:
            if self._gen is not None:
                self._gen.close()
        finally:
            self._gen = None
            self._model = None
            self._samplers = None
            gc.collect()
            try:
                import mlx.core as mx

                mx.clear_cache()
            except Exception:  # best effort at teardown
                log.debug("mx.clear_cache() failed at engine shutdown", exc_info=True)


class _Stop(Exception):
    """Marks an orderly shutdown (close) as the reason the engine stopped."""


def _finalize(detok: Any) -> str:
    """The detokenizer's held-back text; a UTF-8 character cut off by the end is dropped."""
    detok.finalize()
    return str(detok.last_segment).rstrip("\ufffd")


def _as_provider_error(exc: BaseException, what: str) -> ProviderAPIError:
    err = ProviderAPIError(f"{what}: {type(exc).__name__}: {exc}", provider=_PROVIDER)
    err.__cause__ = exc
    return err


def _copy_error(exc: ProviderAPIError) -> ProviderAPIError:
    err = ProviderAPIError(str(exc), provider=exc.provider)
    err.__cause__ = exc.__cause__
    return err
