"""The sweep: for each concurrency level, keep exactly N queries in flight on every system.

Two orders. ``interleaved`` (the default) starts every system first, then runs each level in
rounds and rotates which system goes first, so the systems compared at a level are measured
seconds apart rather than minutes apart: on a shared or thermally throttled machine the
background load drifts by 5-10% over minutes, which is larger than the differences being
measured. ``sequential`` runs one system at a time (all its levels, then the next system),
holding one model in memory at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import ConfigurationError
from .metrics import LevelSummary, QueryResult, summarize
from .progress import Progress
from .scenarios import Query
from .sweep_config import BenchConfig, GenParams
from .systems import System

__all__ = [
    "QUERIES_PER_WORKER_PER_ROUND",
    "RoundResult",
    "SweepResult",
    "outside_model_share",
    "run_level",
    "run_round",
    "run_sweep",
    "split_rounds",
    "summarize_rounds",
]

#: A level is cut into rounds of at least this many queries per in-flight slot, so the tail
#: of each round (slots idling while the last queries finish) stays a small share of it.
QUERIES_PER_WORKER_PER_ROUND = 8

T = TypeVar("T")


@dataclass
class SweepResult:
    """Everything measured so far; filled in as the sweep runs, so it survives Ctrl-C."""

    summaries: list[LevelSummary] = field(default_factory=list)
    queries: list[QueryResult] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False


@dataclass
class RoundResult:
    """One system's run of one slice of a level's queries."""

    results: list[QueryResult]
    wall_s: float
    in_model_s: float | None  # seconds the MLX engine spent in model steps
    complete: bool
    #: The most the system held while the round ran (System.memory_sample), per kind.
    peak: dict[str, int] = field(default_factory=dict)


def split_rounds(
    queries: Sequence[T], concurrency: int, per_worker: int = QUERIES_PER_WORKER_PER_ROUND
) -> list[list[T]]:
    """Cut a level into consecutive rounds of at least ``per_worker * concurrency`` queries.

    Levels too small to split stay one round (high concurrency levels always do: splitting
    them would measure ramp-up and drain instead of a full batch). At concurrency 1 every
    query is a round: one slot has no drain to amortize, and the shortest rounds put the
    systems' runs of similar prompts seconds apart. Measured here, 8-query rounds (~40 s)
    gave per-round engine/serial ratios from 0.7 to 1.2 as the machine's speed drifted.
    """
    if concurrency == 1:
        per_worker = 1
    n = max(1, len(queries) // (per_worker * concurrency))
    size, extra = divmod(len(queries), n)
    rounds, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        rounds.append(list(queries[start:end]))
        start = end
    return rounds


async def run_round(
    system: System,
    queries: Sequence[Query],
    concurrency: int,
    params: GenParams,
    result: SweepResult,
    progress: Progress,
    into: list[RoundResult],
    *,
    round_index: int = 0,
    rounds: int = 1,
) -> RoundResult:
    """Run ``queries`` through ``system`` with a fixed pool of ``concurrency`` workers.

    Each worker takes the next query as soon as its previous one ends, so exactly
    ``concurrency`` requests are in flight until the queue drains. The round is appended to
    ``into`` even when it is cancelled part-way (its ``complete`` is then False).
    """
    pending = iter(enumerate(queries))
    done: list[QueryResult] = []

    async def worker() -> None:
        for index, query in pending:
            r = await system.run_query(index, query, params, concurrency)
            done.append(r)
            result.queries.append(r)
            progress.query_done(r)

    progress.level_started(
        system.name, concurrency, len(queries), round_index=round_index, rounds=rounds
    )
    progress.track(system.tokens_generated)
    before = system.engine_stats()
    peak: dict[str, int] = {}
    watch = asyncio.create_task(_watch_memory(system, peak))
    start = time.perf_counter()
    tasks = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(queries)))]
    complete = False
    try:
        await asyncio.gather(*tasks)
        complete = True
    finally:
        wall = time.perf_counter() - start
        for t in [*tasks, watch]:
            t.cancel()
        await asyncio.gather(*tasks, watch, return_exceptions=True)
        _note_peak(system, peak)
        in_model = _model_time(before, system.engine_stats()) if complete else None
        into.append(RoundResult(done, wall, in_model, complete, peak))
        if rounds > 1 and complete:
            progress.round_done()
    return into[-1]


#: Seconds between two memory samples during a round.
MEMORY_SAMPLE_S = 0.25


async def _watch_memory(system: System, peak: dict[str, int]) -> None:
    while True:
        _note_peak(system, peak)
        await asyncio.sleep(MEMORY_SAMPLE_S)


def _note_peak(system: System, peak: dict[str, int]) -> None:
    _merge_peak(peak, system.memory_sample() or {})


def _merge_peak(into: dict[str, int], sample: dict[str, int]) -> None:
    for kind, value in sample.items():
        into[kind] = max(into.get(kind, 0), value)


def summarize_rounds(
    system: str, concurrency: int, rounds: Sequence[RoundResult], queries: int
) -> LevelSummary:
    """One level's summary from its rounds: their walls add up, their queries pool.

    It is complete when every round finished and together they ran all ``queries``.
    """
    results = [q for r in rounds for q in r.results]
    wall = sum(r.wall_s for r in rounds)
    in_model = [r.in_model_s for r in rounds]
    share = None
    if rounds and wall > 0 and all(x is not None for x in in_model):
        share = max(0.0, min(1.0, 1.0 - sum(x for x in in_model if x is not None) / wall))
    peak: dict[str, int] = {}
    for r in rounds:
        _merge_peak(peak, r.peak)
    return summarize(
        system, concurrency, results, wall, queries=queries, outside_model_share=share,
        complete=all(r.complete for r in rounds) and len(results) == queries,
        peak_memory_bytes=peak.get("memory"), peak_kv_reserved_bytes=peak.get("kv_reserved"),
    )  # fmt: skip


async def run_level(
    system: System,
    queries: Sequence[Query],
    concurrency: int,
    params: GenParams,
    result: SweepResult,
    progress: Progress,
) -> LevelSummary:
    """One system, one level, one round; the summary is appended to ``result``."""
    rounds: list[RoundResult] = []
    try:
        await run_round(system, queries, concurrency, params, result, progress, rounds)
    finally:
        summary = summarize_rounds(system.name, concurrency, rounds, len(queries))
        result.summaries.append(summary)
        progress.level_done(summary)
    return summary


# The MLX engine's cumulative seconds in model steps: BatchGenerator.next() or a solo step
# (MLXProvider.stats()).
_MODEL_TIME_KEY = "model_step_s"


def _model_time(before: dict[str, Any] | None, after: dict[str, Any] | None) -> float | None:
    if not before or not after:
        return None
    a, b = before.get(_MODEL_TIME_KEY), after.get(_MODEL_TIME_KEY)
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return None
    return float(b - a)


def outside_model_share(
    before: dict[str, Any] | None, after: dict[str, Any] | None, wall_s: float
) -> float | None:
    """Share of the level's wall time the engine spent outside model steps."""
    in_model = _model_time(before, after)
    if in_model is None or wall_s <= 0:
        return None
    return max(0.0, min(1.0, 1.0 - in_model / wall_s))


async def run_sweep(
    config: BenchConfig,
    systems: Sequence[System],
    plan: Mapping[int, Sequence[Query]],
    progress: Progress,
    result: SweepResult,
) -> SweepResult:
    """Measure every system at every level, in ``config.order``; always close what started.

    A system that fails to start is recorded in ``result.failures`` and skipped; a
    configuration error stops the sweep.
    """
    if config.order == "sequential" or len(systems) < 2:
        for system in systems:
            try:
                if await _start(system, config, progress, result):
                    for level in config.levels:
                        await run_level(system, plan[level], level, config.params, result, progress)
            finally:
                await system.close()
        return result
    live: list[System] = []
    try:
        for system in systems:
            live.append(system)  # closed in `finally` even when its start fails half-way
            if not await _start(system, config, progress, result):
                live.remove(system)
                await system.close()
        for i, level in enumerate(config.levels):
            await _interleaved_level(live, i, level, plan[level], config, progress, result)
    finally:
        for system in live:
            await system.close()
    return result


async def _start(
    system: System, config: BenchConfig, progress: Progress, result: SweepResult
) -> bool:
    """Start and warm up ``system``; False (failure recorded) when it cannot run."""
    progress.message(f"[{system.name}] starting")
    try:
        t0 = time.perf_counter()
        await system.start()
        await system.warmup(config.params)
        progress.message(f"[{system.name}] ready in {time.perf_counter() - t0:.1f} s")
        return True
    except ConfigurationError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported; the other systems still run
        result.failures[system.name] = f"{type(exc).__name__}: {exc}"
        progress.message(f"[{system.name}] failed to start: {type(exc).__name__}: {exc}")
        return False


async def _interleaved_level(
    systems: Sequence[System],
    level_index: int,
    level: int,
    queries: Sequence[Query],
    config: BenchConfig,
    progress: Progress,
    result: SweepResult,
) -> None:
    """Every system runs each round of the level in turn; the first system rotates."""
    rounds = split_rounds(queries, level)
    done: dict[str, list[RoundResult]] = {s.name: [] for s in systems}
    try:
        for r, chunk in enumerate(rounds):
            k = (level_index + r) % len(systems)
            for system in [*systems[k:], *systems[:k]]:
                await run_round(
                    system, chunk, level, config.params, result, progress, done[system.name],
                    round_index=r, rounds=len(rounds),
                )  # fmt: skip
    finally:
        order = {s.name: i for i, s in enumerate(systems)}
        for system in systems:
            if done[system.name]:
                summary = summarize_rounds(system.name, level, done[system.name], len(queries))
                result.summaries.append(summary)
                progress.level_done(summary)
        # Tables and CSVs list each system's levels together, whatever order they ran in.
        result.summaries.sort(key=lambda s: (order.get(s.system, len(order)), s.concurrency))
