"""The MLX engine: one thread that owns the model and steps mlx-lm's BatchGenerator.

MLX streams are thread-bound, so this thread loads the model (model_setup.py) and makes every
MLX call; callers exchange only Python ints and strings with it, through typed commands in
an inbox (protocol.py) and per-request sinks. Each turn of :meth:`MLXEngine._loop` is one
step in three stages, the shape of vLLM's ``EngineCore.step()``:

1. **schedule**: apply the commands, expire and drop requests, admit waiting ones
   (scheduler.py picks them; a request alone in the engine runs solo, solo.py; an arrival
   hands the solo request over to the batch);
2. **execute**: one solo step or one ``BatchGenerator.next()`` (batch.py);
3. **update**: route each token to its request (output.py) and return finished requests'
   KV caches to the prompt cache (cache_scheduler.py).

Idle, the thread blocks on the inbox. Private mlx-lm details are used only through
compat.py. docs/architecture.md walks one request through these modules.
"""

from __future__ import annotations

import collections
import gc
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
    ProviderAPIError,
    ProviderUnavailableError,
)
from .batch import Batch
from .blas import blas_info
from .cache_scheduler import CacheScheduler
from .compat import Compat
from .compat import check as check_mlx_lm
from .core import EngineCore
from .counters import EngineCounters
from .malloc_trim import Trimmer
from .memory_plan import MemoryPlan
from .model_setup import ModelSetup, set_up
from .options import EngineOptions
from .protocol import Call, Cancel, Command, Job, Sink, Stop, Submit, put_threadsafe
from .request_state import RequestState
from .scheduler import Scheduler
from .solo import SoloLane

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
        options: EngineOptions | None = None,
        *,
        mlx_lm: Compat | None = None,
        name: str = "abstractcore-mlx-engine",
    ) -> None:
        self.model_path = Path(model_path)
        self.options = options or EngineOptions()
        #: What the installed mlx-lm allows (compat.py); checked on the caller's thread, where
        #: its one warning for an unverified version is seen.
        self.mlx_lm = mlx_lm or check_mlx_lm()
        self.counters = EngineCounters()
        self.scheduler = Scheduler(self.options)
        #: The model's parts and the requests in them (built on the engine thread).
        self.core: EngineCore | None = None
        self.tokenizer: Any = None
        self.context_length: int | None = None
        self.vocab_size = 0
        self._inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._closed = False  # set by callers: no new submissions
        self._dead: BaseException | None = None  # why the engine thread stopped (once it has)
        self._orderly = False  # it stopped because close() asked it to
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._started_at = time.perf_counter()
        self._calls: list[Call] = []
        self._stop_requested = False
        self._setup: ModelSetup | None = None  # what load set up (its stats outlive close)
        self._trimmer = Trimmer()  # malloc_trim between steps, over a budget (malloc_trim.py)

    # ------------------------------------------------------------------ caller side
    def start(self) -> None:
        """Start the thread and wait until the model is loaded; re-raise a loading error."""
        self._thread.start()
        self._ready.wait()
        err = self._load_error
        if err is not None:
            self._join(None)
            if isinstance(err, AbstractCoreError):
                raise err
            raise ProviderAPIError(
                f"loading the MLX model from {self.model_path} failed: {err}", provider=_PROVIDER
            ) from err

    def submit(self, job: Job, sink: Sink) -> RequestState:
        """Queue a job; its text, Final or error arrive on ``sink``."""
        self._check_open()
        state = RequestState(job=job, sink=sink)
        self._inbox.put(Submit(state))
        # The engine may have stopped between the check and the put: fail it ourselves
        # (a second terminal item, if the engine also failed it, is never read).
        if self._closed or self._dead is not None:
            put_threadsafe(sink, self._closed_error())
        return state

    def cancel(self, state: RequestState) -> None:
        """Drop a request (never blocks); the engine removes it before its next step."""
        if not state.cancelled:
            state.cancelled = True
            self._inbox.put(Cancel(state))

    def call(self, fn: Callable[[MLXEngine], Any], timeout: float | None = None) -> Any:
        """Run ``fn(engine)`` on the engine thread between two steps and return its result."""
        self._check_open()
        command = Call(fn)
        self._inbox.put(command)
        return command.future.result(timeout)

    @property
    def solo_decode(self) -> bool:
        """Whether a lone request decodes solo (settable from the engine thread)."""
        return self.scheduler.solo_decode

    @solo_decode.setter
    def solo_decode(self, on: bool) -> None:
        self.scheduler.solo_decode = on

    @property
    def memory(self) -> MemoryPlan | None:
        """The memory budgets (None before the model is loaded)."""
        return None if self._setup is None else self._setup.memory

    @property
    def cache_scheduler(self) -> CacheScheduler | None:
        """The prompt cache's engine side (None before the model is loaded)."""
        return self.scheduler.cache

    def stats(self) -> dict[str, Any]:
        """A snapshot of the engine's counters (see MLXProvider.stats)."""
        core = self.core
        stats = self.counters.as_dict(
            active=0 if core is None else len(core.active),
            queued=self.scheduler.queued,
            wall_s=time.perf_counter() - self._started_at,
        )
        cache, setup = self.scheduler.cache, self._setup
        if cache is not None:  # its store is emptied at close
            stats["prompt_cache"] = cache.store.stats()
        table = None if setup is None else setup.padding.table
        stats["row_padding"] = {} if table is None else table.padded()
        stats["cpu_ops"] = [] if setup is None else list(setup.cpu_ops)
        stats["cpu_ops_not_replaced"] = [] if setup is None else list(setup.cpu_ops_missing)
        if setup is not None:
            stats["mlx_lm"] = setup.compat.stats()
        stats["blas"] = blas_info()
        stats["malloc_trims"] = self._trimmer.trims
        stats["malloc_trim_s"] = self._trimmer.seconds
        stats["malloc_free_bytes"] = self._trimmer.free_bytes
        stats["memory"] = {**_mlx_memory(), **self.scheduler.kv_stats()}
        if self.memory is not None:
            stats["memory"].update(self.memory.stats())
        return stats

    def snapshot(self, timeout: float | None = 30.0) -> dict[str, Any]:
        """What the engine thread holds right now, read between two steps (diagnostics)."""

        def probe(engine: MLXEngine) -> dict[str, Any]:
            core = engine.core
            assert core is not None
            solo = core.solo.state
            held = [*core.active.values(), *core.scheduler.waiting, *core.cache.deferred_states()]
            return {
                **core.batch.snapshot(),
                "solo_uid": None if solo is None else solo.uid,
                "active": len(core.active),
                "waiting": len(core.scheduler.waiting),
                "statuses": dict(collections.Counter(s.status.value for s in held)),
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
            self._inbox.put(Stop())
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

    def _closed_error(self) -> ProviderAPIError | EngineClosedError:
        if self._dead is not None and not self._orderly:
            return ProviderAPIError(
                f"the MLX engine thread died: {self._dead!r}", provider=_PROVIDER
            )
        return EngineClosedError("the MLX provider is closed", provider=_PROVIDER)

    def _pending_error(self) -> BaseException:
        if self._orderly:
            return GenerationCancelledError(
                "the MLX provider was closed before this request finished"
            )
        return self._closed_error()

    # ------------------------------------------------------------------ engine thread
    def _main(self) -> None:
        try:
            self._trimmer.start()  # freed blocks kept for reuse, up to a budget (malloc_trim.py)
            self._load()
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            self._load_error = self._dead = exc
            self._ready.set()
            return
        self._ready.set()
        reason: BaseException | None = None
        try:
            self._loop()
        except BaseException as exc:
            log.exception("MLX engine thread died")
            reason = exc
        finally:
            self._shutdown(reason)

    def _load(self) -> None:
        setup = set_up(self.model_path, self.options, self.mlx_lm)
        self.tokenizer = setup.tokenizer
        self.context_length = setup.context_length
        self.vocab_size = setup.vocab_size
        if setup.memory.kv_bytes_per_token:  # 0: not measured, rows alone bound admission
            self.scheduler.kv_budget = setup.memory.kv_budget_bytes
        batch = Batch(setup.model, setup.eos, self.options, setup.stream, setup.compat)
        solo = SoloLane(setup.model, setup.stream, self.options.prefill_step_size, setup.eos)
        path = self.model_path
        if setup.merge_reason is not None:
            log.info(
                "prompt caching and solo decoding are off for %s: %s", path, setup.merge_reason
            )
            self.solo_decode = False  # a handover merges the solo cache into the batch
        elif setup.cache_reason is not None:
            log.info("prompt caching is off for %s: %s", path, setup.cache_reason)
        self.scheduler.cache = CacheScheduler.for_model(
            self.options, setup, self.scheduler.requeue, model_id=str(path)
        )
        self.core = EngineCore(setup, self.scheduler, batch, solo, self.counters)
        self._setup = setup

    def _loop(self) -> None:
        inbox = self._inbox
        perf = time.perf_counter
        core = self.core
        assert core is not None
        trimmer = self._trimmer
        while True:
            if not core.busy:
                trimmer.idle()  # what the last requests freed goes back to the kernel
                self._handle(inbox.get())  # idle: block until there is work
            while True:
                try:
                    command = inbox.get_nowait()
                except queue.Empty:
                    break
                self._handle(command)
            if self._stop_requested:
                return
            t0 = perf()  # after any idle wait: busy_s counts only time with work
            core.tidy(t0)
            self._run_calls()
            core.step(t0)
            trimmer.after_step(perf())

    def _handle(self, command: Command) -> None:
        core = self.core
        assert core is not None
        if isinstance(command, Submit):
            core.enqueue(command.state)
        elif isinstance(command, Cancel):
            core.drop(command.state)
        elif isinstance(command, Call):
            self._calls.append(command)
        elif isinstance(command, Stop):
            self._stop_requested = True
        else:
            raise TypeError(f"unknown engine command {command!r}")

    def _run_calls(self) -> None:
        calls, self._calls = self._calls, []
        for command in calls:
            try:
                command.future.set_result(command.fn(self))
            except BaseException as exc:  # noqa: BLE001 - delivered to the caller
                command.future.set_exception(exc)

    def _shutdown(self, reason: BaseException | None) -> None:
        """Fail whatever is pending, release the model; runs last on the engine thread."""
        self._orderly = reason is None
        self._dead = reason or EngineClosedError("the MLX provider is closed", provider=_PROVIDER)
        self._closed = True
        late: list[RequestState] = []
        while True:  # requests and calls that raced in after the loop stopped
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(command, Submit):
                late.append(command.state)
            elif isinstance(command, Call):
                self._calls.append(command)
        for command in self._calls:
            command.future.set_exception(self._closed_error())
        self._calls = []
        core, self.core = self.core, None
        try:
            if core is not None:
                core.shutdown(self._pending_error, late, orderly=self._orderly)
        finally:
            del core
            gc.collect()
            try:
                import mlx.core as mx

                mx.clear_cache()
            except Exception:  # best effort at teardown
                log.debug("mx.clear_cache() failed at engine shutdown", exc_info=True)


def _mlx_memory() -> dict[str, int]:
    """MLX's allocator, process-wide (the model's weights included): bytes held by live
    arrays (``active``), freed buffers kept for reuse (``cache``), the high-water mark
    (``peak``). The prompt cache's own share is ``prompt_cache.bytes``."""
    import mlx.core as mx

    return {
        "active_bytes": int(mx.get_active_memory()),
        "cache_bytes": int(mx.get_cache_memory()),
        "peak_bytes": int(mx.get_peak_memory()),
    }
