"""Realtime progress: a rich progress bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, TextIO

from .metrics import LevelSummary, QueryResult

__all__ = ["LogProgress", "Progress", "RichProgress", "make_progress"]


class Progress:
    """Receives sweep events; the base class prints nothing but tracks the running level."""

    def __init__(self) -> None:
        self.system = ""
        self.concurrency = 0
        self.total = 0
        self.done = 0
        self.errors = 0
        self.tokens = 0
        self.started = 0.0

    def message(self, text: str) -> None:
        """A free-form status line (system starting, warm-up, failures)."""

    def level_started(self, system: str, concurrency: int, total: int) -> None:
        """A level begins: ``total`` queries at ``concurrency`` in flight."""
        self.system, self.concurrency, self.total = system, concurrency, total
        self.done = self.errors = self.tokens = 0
        self.started = time.perf_counter()

    def query_done(self, result: QueryResult) -> None:
        """One query of the running level finished."""
        self.done += 1
        self.errors += 0 if result.ok else 1
        self.tokens += result.output_tokens if result.ok else 0

    def level_done(self, summary: LevelSummary) -> None:
        """The running level ended (or was cut short)."""

    def close(self) -> None:
        """Stop any display or timer."""

    def status_line(self) -> str:
        """One line describing the running level so far."""
        elapsed = time.perf_counter() - self.started
        rate = self.tokens / elapsed if elapsed > 0 else 0.0
        err = f", {self.errors} errors" if self.errors else ""
        return (
            f"[{self.system} c={self.concurrency}] {self.done}/{self.total} queries, "
            f"{self.tokens} tokens, {rate:.1f} tok/s, {elapsed:.1f} s{err}"
        )


class LogProgress(Progress):
    """Plain lines for logs and pipes: level start/end plus a status line every interval."""

    def __init__(self, interval_s: float, stream: TextIO | None = None) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.stream = stream or sys.stderr
        self._ticker: asyncio.Task[None] | None = None

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        self._print(text)

    def level_started(self, system: str, concurrency: int, total: int) -> None:
        super().level_started(system, concurrency, total)
        self._print(f"[{system} c={concurrency}] level started: {total} queries")
        self._stop_ticker()
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self._print(self.status_line())

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

    def level_started(self, system: str, concurrency: int, total: int) -> None:
        super().level_started(system, concurrency, total)
        self._task = self._bar.add_task(f"{system} c={concurrency}", total=total, rate="")

    def query_done(self, result: QueryResult) -> None:
        super().query_done(result)
        if self._task is not None:
            elapsed = time.perf_counter() - self.started
            rate = f"{self.tokens / elapsed:.1f} tok/s" if elapsed > 0 else ""
            self._bar.update(self._task, advance=1, rate=rate)

    def level_done(self, summary: LevelSummary) -> None:
        if self._task is not None:
            rate = f"{summary.throughput_tok_s:.1f} tok/s"
            if not summary.complete:
                rate += " (interrupted)"
            self._bar.update(self._task, rate=rate)
            self._bar.stop_task(self._task)
            self._task = None

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
