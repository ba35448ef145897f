"""The sweep: for each system, for each concurrency level, keep exactly N queries in flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError
from .config import BenchConfig, GenParams
from .metrics import LevelSummary, QueryResult, summarize
from .progress import Progress
from .scenarios import Query
from .systems import System

__all__ = ["SweepResult", "outside_next_share", "run_level", "run_sweep"]


@dataclass
class SweepResult:
    """Everything measured so far; filled in as the sweep runs, so it survives Ctrl-C."""

    summaries: list[LevelSummary] = field(default_factory=list)
    queries: list[QueryResult] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False


async def run_level(
    system: System,
    queries: Sequence[Query],
    concurrency: int,
    params: GenParams,
    result: SweepResult,
    progress: Progress,
) -> LevelSummary:
    """Run ``queries`` through ``system`` with a fixed pool of ``concurrency`` workers.

    Each worker takes the next query as soon as its previous one ends, so exactly
    ``concurrency`` requests are in flight until the queue drains.
    """
    pending = iter(enumerate(queries))
    done: list[QueryResult] = []

    async def worker() -> None:
        for index, query in pending:
            r = await system.run_query(index, query, params, concurrency)
            done.append(r)
            result.queries.append(r)
            progress.query_done(r)

    progress.level_started(system.name, concurrency, len(queries))
    before = system.engine_stats()
    start = time.perf_counter()
    tasks = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(queries)))]
    complete = False
    try:
        await asyncio.gather(*tasks)
        complete = True
    finally:
        wall = time.perf_counter() - start
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        share = outside_next_share(before, system.engine_stats(), wall) if complete else None
        summary = summarize(
            system.name, concurrency, done, wall,
            queries=len(queries), outside_next_share=share, complete=complete,
        )  # fmt: skip
        result.summaries.append(summary)
        progress.level_done(summary)
    return summary


# The MLX engine's cumulative seconds inside BatchGenerator.next() (MLXProvider.stats()).
_NEXT_TIME_KEY = "time_in_next_s"


def outside_next_share(
    before: dict[str, Any] | None, after: dict[str, Any] | None, wall_s: float
) -> float | None:
    """Share of the level's wall time the engine spent outside ``BatchGenerator.next()``."""
    if not before or not after or wall_s <= 0:
        return None
    a, b = before.get(_NEXT_TIME_KEY), after.get(_NEXT_TIME_KEY)
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return None
    return max(0.0, min(1.0, 1.0 - (b - a) / wall_s))


async def run_sweep(
    config: BenchConfig,
    systems: Sequence[System],
    plan: Mapping[int, Sequence[Query]],
    progress: Progress,
    result: SweepResult,
) -> SweepResult:
    """Start, warm up and sweep each system in turn; always close what was started.

    A system that fails to start is recorded in ``result.failures`` and skipped; a
    configuration error stops the sweep.
    """
    for system in systems:
        progress.message(f"[{system.name}] starting")
        try:
            try:
                t0 = time.perf_counter()
                await system.start()
                await system.warmup(config.params)
                progress.message(f"[{system.name}] ready in {time.perf_counter() - t0:.1f} s")
            except ConfigurationError:
                raise
            except Exception as exc:  # noqa: BLE001 - reported; the other systems still run
                result.failures[system.name] = f"{type(exc).__name__}: {exc}"
                progress.message(f"[{system.name}] failed to start: {type(exc).__name__}: {exc}")
                continue
            for level in config.levels:
                await run_level(system, plan[level], level, config.params, result, progress)
        finally:
            await system.close()
    return result
