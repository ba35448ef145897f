"""The sweep's orders and rounds, driven with in-process systems that record what ran when."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest

from abstractcore.bench.bench_command import parse_config
from abstractcore.bench.metrics import QueryResult
from abstractcore.bench.progress import LogProgress, Progress
from abstractcore.bench.runner import (
    RoundResult,
    SweepResult,
    run_sweep,
    split_rounds,
    summarize_rounds,
)
from abstractcore.bench.scenarios import Query
from abstractcore.bench.sweep_config import BenchConfig, GenParams
from abstractcore.bench.systems import System


class _Recorder(System):
    """Answers each query after ``delay`` seconds; logs (event, system, level, query id)."""

    def __init__(self, name: str, log: list[tuple[str, ...]], *, fail_start: bool = False):
        super().__init__(name)
        self.log = log
        self.fail_start = fail_start
        self.in_flight = 0
        self.peak = 0
        self.closed = 0
        self.next_s = 0.0

    async def start(self) -> None:
        self.log.append(("start", self.name))
        if self.fail_start:
            raise RuntimeError("no such server")

    async def warmup(self, params: GenParams) -> None:
        self.log.append(("warmup", self.name))

    async def run_query(
        self, index: int, query: Query, params: GenParams, concurrency: int
    ) -> QueryResult:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.log.append(("query", self.name, str(concurrency), query.id))
        await asyncio.sleep(0.002)
        self.next_s += 0.001
        self.in_flight -= 1
        return QueryResult(
            self.name, concurrency, index, query.id, output_tokens=4, ttft_s=0.001, duration_s=0.002
        )

    def engine_stats(self) -> dict[str, Any] | None:
        return {"model_step_s": self.next_s} if self.name == "engine" else None

    async def close(self) -> None:
        self.closed += 1
        self.log.append(("close", self.name))


def _config(order: str, levels: tuple[int, ...]) -> BenchConfig:
    return BenchConfig(prompts_file=Path("unused.json"), levels=levels, order=order)


def _plan(levels: tuple[int, ...], n: int) -> dict[int, list[Query]]:
    return {c: [Query(id=f"c{c}-q{i}", messages=[]) for i in range(n)] for c in levels}


def _sweep(systems: list[_Recorder], order: str, levels: tuple[int, ...], n: int) -> SweepResult:
    result = SweepResult()
    asyncio.run(run_sweep(_config(order, levels), systems, _plan(levels, n), Progress(), result))
    return result


def test_split_rounds_keeps_order_and_enough_queries_per_slot() -> None:
    qs = list(range(32))
    assert split_rounds(qs, 1) == [[q] for q in qs]  # one slot: every query is a round
    assert split_rounds(qs, 2) == [qs[0:16], qs[16:32]]
    assert split_rounds(qs, 8) == [qs]  # 32 < 2 * 8 * 8: one round
    assert split_rounds(qs, 32) == [qs]
    odd = split_rounds(list(range(35)), 2)
    assert [len(r) for r in odd] == [18, 17] and [q for r in odd for q in r] == list(range(35))
    assert split_rounds([], 4) == [[]]
    assert split_rounds([], 1) == [[]]


def test_interleaved_sweep_alternates_systems_within_each_level() -> None:
    log: list[tuple[str, ...]] = []
    a, b = _Recorder("engine", log), _Recorder("serial", log)
    result = _sweep([a, b], "interleaved", (1, 2), 16)
    # Both systems are started and warmed up before anything is measured.
    assert log[:4] == [("start", "engine"), ("warmup", "engine"), ("start", "serial"),
                       ("warmup", "serial")]  # fmt: skip
    runs = [(e[1], e[2]) for e in log if e[0] == "query"]
    # c=1: one query per round; the first system rotates (engine, serial | serial, engine).
    c1 = [name for name, level in runs if level == "1"]
    assert c1 == ["engine", "serial", "serial", "engine"] * 8
    # c=2: one round (16 < 2 * 8 * 2); this level starts with the other system.
    c2 = [name for name, level in runs if level == "2"]
    assert c2 == ["serial"] * 16 + ["engine"] * 16
    assert a.peak == 2 and b.peak == 2  # never more than the level's concurrency in flight
    # Each system sees every prompt of a level exactly once, in order.
    ids = [e[3] for e in log if e[0] == "query" and e[1] == "engine" and e[2] == "1"]
    assert ids == [f"c1-q{i}" for i in range(16)]
    # One summary per system and level, listed system by system.
    assert [(s.system, s.concurrency, s.completed, s.complete) for s in result.summaries] == [
        ("engine", 1, 16, True), ("engine", 2, 16, True),
        ("serial", 1, 16, True), ("serial", 2, 16, True),
    ]  # fmt: skip
    eng = result.summaries[0]
    assert eng.output_tokens == 64 and eng.outside_model_share is not None
    assert result.summaries[2].outside_model_share is None  # serial has no engine stats
    assert (
        a.closed == 1 and b.closed == 1 and log[-2:] == [("close", "engine"), ("close", "serial")]
    )


@pytest.mark.parametrize(("interval", "round_lines"), [(3600.0, 0), (0.0, 16)])
def test_one_query_rounds_print_one_start_line_and_throttled_round_lines(
    interval: float, round_lines: int
) -> None:
    log: list[tuple[str, ...]] = []
    out = io.StringIO()
    progress = LogProgress(interval, out)
    config, plan = _config("interleaved", (1,)), _plan((1,), 8)
    systems = [_Recorder("engine", log), _Recorder("serial", log)]
    asyncio.run(run_sweep(config, systems, plan, progress, SweepResult()))
    lines = out.getvalue().splitlines()
    started = [x for x in lines if "started" in x]
    assert started == [
        "[engine c=1] level started: 8 queries, one per round",
        "[serial c=1] level started: 8 queries, one per round",
    ]
    # A line per round only once an interval has passed since the last line printed.
    assert sum(1 for x in lines if " round " in x and " done: 1/1 queries" in x) == round_lines
    assert sum(1 for x in lines if "level done: 8/8 queries" in x) == 2


def test_sequential_sweep_runs_one_system_at_a_time() -> None:
    log: list[tuple[str, ...]] = []
    a, b = _Recorder("engine", log), _Recorder("serial", log)
    result = _sweep([a, b], "sequential", (1, 2), 4)
    kinds = [(e[0], e[1]) for e in log if e[0] != "query"]
    assert kinds == [("start", "engine"), ("warmup", "engine"), ("close", "engine"),
                     ("start", "serial"), ("warmup", "serial"), ("close", "serial")]  # fmt: skip
    assert [(s.system, s.concurrency) for s in result.summaries] == [
        ("engine", 1), ("engine", 2), ("serial", 1), ("serial", 2)
    ]  # fmt: skip


def test_a_system_that_fails_to_start_is_skipped_and_closed() -> None:
    log: list[tuple[str, ...]] = []
    a, bad = _Recorder("engine", log), _Recorder("mlx-lm-server", log, fail_start=True)
    result = _sweep([a, bad], "interleaved", (1,), 4)
    assert "RuntimeError: no such server" in result.failures["mlx-lm-server"]
    assert {s.system for s in result.summaries} == {"engine"}
    assert bad.closed == 1 and a.closed == 1


def test_cancelling_mid_level_keeps_partial_rounds() -> None:
    log: list[tuple[str, ...]] = []
    a, b = _Recorder("engine", log), _Recorder("serial", log)
    result = SweepResult()

    async def main() -> None:
        task = asyncio.create_task(
            run_sweep(_config("interleaved", (2,)), [a, b], _plan((2,), 32), Progress(), result)
        )
        while sum(1 for e in log if e[0] == "query") < 20:  # inside serial's first round (of 16)
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    by_system = {s.system: s for s in result.summaries}
    assert by_system["engine"].complete is False  # 1 of 2 rounds: not a full level
    assert by_system["engine"].completed == 16
    assert 0 < by_system["serial"].completed < 16 and not by_system["serial"].complete
    assert a.closed == 1 and b.closed == 1


def test_summarize_rounds_adds_walls_and_engine_time() -> None:
    q = QueryResult("engine", 1, 0, "p", output_tokens=10, ttft_s=0.1, duration_s=1.0)
    rounds = [RoundResult([q], 2.0, 1.8, True), RoundResult([q, q], 3.0, 2.7, True)]
    s = summarize_rounds("engine", 1, rounds, queries=3)
    assert s.wall_s == pytest.approx(5.0) and s.output_tokens == 30
    assert s.throughput_tok_s == pytest.approx(6.0)
    assert s.outside_model_share == pytest.approx(0.1)
    partial = summarize_rounds("engine", 1, [*rounds, RoundResult([], 1.0, None, False)], 3)
    assert not partial.complete and partial.outside_model_share is None


def test_order_flag() -> None:
    assert parse_config([]).order == "interleaved"
    assert parse_config(["--order", "sequential"]).order == "sequential"


class _Growing(_Recorder):
    """Holds more memory while queries run, and counts tokens as they are generated."""

    def __init__(self, name: str, log: list[tuple[str, ...]]) -> None:
        super().__init__(name, log)
        self.generated = 0

    async def run_query(
        self, index: int, query: Query, params: GenParams, concurrency: int
    ) -> QueryResult:
        self.generated += 3  # tokens appear before the query returns
        await asyncio.sleep(0.3)
        return await super().run_query(index, query, params, concurrency)

    def tokens_generated(self) -> int | None:
        return self.generated

    def memory_sample(self) -> dict[str, int] | None:
        return {"memory": 1000 + 100 * self.in_flight + 10 * self.generated, "kv_reserved": 7}


def test_a_level_records_the_most_memory_its_system_held() -> None:
    system = _Growing("engine", [])
    result = _sweep([system], "sequential", (2,), 2)
    (summary,) = result.summaries
    # Sampled at the start, every 0.25 s and at the end: the last sample is the largest.
    assert summary.peak_memory_bytes == 1000 + 10 * 6
    assert summary.peak_kv_reserved_bytes == 7
    assert (
        _sweep([_Recorder("serial", [])], "sequential", (1,), 1).summaries[0].peak_memory_bytes
        is None
    )


def test_progress_counts_the_tokens_of_queries_still_running() -> None:
    async def main() -> str:
        progress = Progress()
        system = _Growing("engine", [])
        progress.level_started("engine", 2, 2)
        progress.track(system.tokens_generated)
        task = asyncio.create_task(system.run_query(0, Query(id="q", messages=[]), GenParams(), 2))
        await asyncio.sleep(0.05)
        line = progress.status_line()  # the query has not returned yet
        await task
        return line

    assert "0/2 queries, 3 tokens" in asyncio.run(main())
