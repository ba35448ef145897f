"""Realtime progress: a rich progress bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from .metrics import LevelSummary, QueryResult

__all__ = ["LogProgress", "Progress", "RichProgress", "make_progress"]


class Progress:
    """Receives sweep events; the base class prints nothing but tracks the running round.

    A level may run in rounds (the interleaved order runs every system's round 1, then every
    system's round 2, ...); the counters here belong to the round that is running now.
    """

    def __init__(self) -> None:
        self.system = ""
        self.concurrency = 0
        self.total = 0
        self.round_index = 0
        self.rounds = 1
        self.done = 0
        self.errors = 0
        self.tokens = 0
        self.started = 0.0
        #: The system's count of tokens generated so far (System.tokens_generated), and its
        #: value when the round began: progress then includes queries still running.
        self._source: Callable[[], int | None] | None = None
        self._base = 0

    def track(self, source: Callable[[], int | None]) -> None:
        """Count the running round's tokens from ``source`` (called after level_started)."""
        base = source()
        self._source, self._base = (None, 0) if base is None else (source, base)

    @property
    def generated(self) -> int:
        """Tokens of the running round so far: of running queries too when the system
        counts them, else of the finished queries."""
        now = None if self._source is None else self._source()
        return self.tokens if now is None else max(self.tokens, now - self._base)

    def message(self, text: str) -> None:
        """A free-form status line (system starting, warm-up, failures)."""

    def level_started(
        self, system: str, concurrency: int, total: int, *, round_index: int = 0, rounds: int = 1
    ) -> None:
        """A level (or round ``round_index`` of ``rounds``) begins: ``total`` queries at
        ``concurrency`` in flight."""
        self.system, self.concurrency, self.total = system, concurrency, total
        self.round_index, self.rounds = round_index, rounds
        self.done = self.errors = self.tokens = 0
        self._source, self._base = None, 0
        self.started = time.perf_counter()

    def query_done(self, result: QueryResult) -> None:
        """One query of the running round finished."""
        self.done += 1
        self.errors += 0 if result.ok else 1
        self.tokens += result.output_tokens if result.ok else 0

    def round_done(self) -> None:
        """The running round ended (only called when a level has more than one round)."""

    def level_done(self, summary: LevelSummary) -> None:
        """A system finished a level (every round of it), or was cut short."""

    def close(self) -> None:
        """Stop any display or timer."""

    @property
    def label(self) -> str:
        """``[system c=N]``, plus ``round i/k`` when the level runs in rounds."""
        part = f" round {self.round_index + 1}/{self.rounds}" if self.rounds > 1 else ""
        return f"[{self.system} c={self.concurrency}]{part}"

    def status_line(self) -> str:
        """One line describing the running round so far."""
        elapsed = time.perf_counter() - self.started
        tokens = self.generated
        rate = tokens / elapsed if elapsed > 0 else 0.0
        err = f", {self.errors} errors" if self.errors else ""
        return (
            f"{self.label} {self.done}/{self.total} queries, "
            f"{tokens} tokens, {rate:.1f} tok/s, {elapsed:.1f} s{err}"
        )


class LogProgress(Progress):
    """Plain lines for logs and pipes: level start/end plus a status line every interval."""

    def __init__(self, interval_s: float, stream: TextIO | None = None) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.stream = stream or sys.stderr
        self._ticker: asyncio.Task[None] | None = None
        self._last_line = 0.0  # perf_counter() of the last line printed

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
        self._last_line = time.perf_counter()

    def message(self, text: str) -> None:
        self._print(text)

    def level_started(
        self, system: str, concurrency: int, total: int, *, round_index: int = 0, rounds: int = 1
    ) -> None:
        super().level_started(system, concurrency, total, round_index=round_index, rounds=rounds)
        if total == 1 and rounds > 1:  # concurrency 1: one query per round
            if round_index == 0:
                self._print(
                    f"[{system} c={concurrency}] level started: {rounds} queries, one per round"
                )
        else:
            what = "level started" if rounds == 1 else "started"
            self._print(f"{self.label} {what}: {total} queries")
        self._stop_ticker()
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self._print(self.status_line())

    def round_done(self) -> None:
        self._stop_ticker()
        if self.total == 1 and time.perf_counter() - self._last_line < self.interval_s:
            return  # one-query rounds: a line per interval, not two per query
        elapsed = time.perf_counter() - self.started
        rate = self.tokens / elapsed if elapsed > 0 else 0.0
        self._print(
            f"{self.label} done: {self.done}/{self.total} queries, "
            f"{rate:.1f} tok/s, {elapsed:.1f} s"
        )

    def level_done(self, summary: LevelSummary) -> None:
        self._stop_ticker()
        state = "done" if summary.complete else "interrupted"
        self._print(
            f"[{summary.system} c={summary.concurrency}] level {state}: "
            f"{summary.completed}/{summary.queries} queries, {summary.throughput_tok_s:.1f} tok/s, "
            f"p50 TTFT {_fmt(summary.ttft_p50_s)} s, {summary.wall_s:.1f} s"
        )

    def _stop_ticker(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def close(self) -> None:
        self._stop_ticker()


class RichProgress(Progress):
    """A live progress bar per level (terminal only)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichBar

        self.console = Console(file=stream or sys.stderr)
        self._bar = RichBar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._bar.start()
        self._task: Any = None

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def level_started(
        self, system: str, concurrency: int, total: int, *, round_index: int = 0, rounds: int = 1
    ) -> None:
        super().level_started(system, concurrency, total, round_index=round_index, rounds=rounds)
        self._finish_task()
        self._task = self._bar.add_task(self.label.strip("[]"), total=total, rate="")

    def query_done(self, result: QueryResult) -> None:
        super().query_done(result)
        if self._task is not None:
            elapsed = time.perf_counter() - self.started
            rate = f"{self.tokens / elapsed:.1f} tok/s" if elapsed > 0 else ""
            self._bar.update(self._task, advance=1, rate=rate)

    def _finish_task(self) -> None:
        if self._task is not None:
            self._bar.stop_task(self._task)
            self._task = None

    def level_done(self, summary: LevelSummary) -> None:
        self._finish_task()
        state = "" if summary.complete else " (interrupted)"
        self.message(
            f"[{summary.system} c={summary.concurrency}] {summary.completed}/{summary.queries} "
            f"queries, {summary.throughput_tok_s:.1f} tok/s{state}"
        )

    def close(self) -> None:
        self._bar.stop()


def make_progress(interval_s: float, stream: TextIO | None = None) -> Progress:
    """A rich bar when ``stream`` is a terminal and rich is installed, else log lines."""
    out = stream or sys.stderr
    if out.isatty():
        try:
            return RichProgress(out)
        except ImportError:
            pass
    return LogProgress(interval_s, out)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
