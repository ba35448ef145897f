"""The full sweep: instances x max batch size x prefill batch size x request concurrency.

``--full-sweep`` (with ``--instances``, ``--max-batch-sizes``, ``--prefill-batch-sizes`` and
``--concurrency-levels``) starts one cluster per (instances, max batch size, prefill batch
size) cell, the engine options passed to every instance, runs every concurrency level of the
scenario against it, and appends one CSV row per level as soon as it is measured, so a run
cut short (Ctrl-C, a crash) keeps every row it finished. ``abstractcore bench top FILE``
ranks the rows of any of the benchmark's CSVs by one column.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from .cluster_system import ClusterSystem
from .metrics import LevelSummary, QueryResult
from .progress import make_progress
from .report import _markdown, _num, output_paths
from .runner import SweepResult, run_level
from .scenarios import Query
from .sweep_config import BenchConfig

__all__ = ["SWEEP_COLUMNS", "Cell", "grid", "run_full_sweep", "top_rows"]

SWEEP_COLUMNS = [
    "instances", "max_batch_size", "prefill_batch_size", "concurrency", "queries",
    "completed", "errors", "wall_s", "output_tokens", "throughput_tps", "ttft_p50_s",
    "ttft_p95_s", "cache_hit_rate", "complete",
]  # fmt: skip


@dataclass(frozen=True)
class Cell:
    """One cluster configuration of the sweep."""

    instances: int
    max_batch_size: int
    prefill_batch_size: int

    @property
    def label(self) -> str:
        return f"{self.instances}x mbs={self.max_batch_size} pbs={self.prefill_batch_size}"


def grid(instances: Sequence[int], batch: Sequence[int], prefill: Sequence[int]) -> list[Cell]:
    """Every combination; prefill batches larger than the batch are skipped (the engine
    clamps them to it, so they would repeat a smaller cell)."""
    return [Cell(n, b, p) for n, b, p in itertools.product(instances, batch, prefill) if p <= b]


def _hit_rate(results: Sequence[QueryResult]) -> float | None:
    prompt = sum(r.prompt_tokens for r in results if r.ok)
    return None if prompt == 0 else sum(r.cached_tokens for r in results if r.ok) / prompt


def _row(cell: Cell, s: LevelSummary, results: Sequence[QueryResult]) -> list[Any]:
    return [
        cell.instances, cell.max_batch_size, cell.prefill_batch_size, s.concurrency, s.queries,
        s.completed, s.errors, _num(s.wall_s), s.output_tokens, _num(s.throughput_tok_s, 2),
        _num(s.ttft_p50_s), _num(s.ttft_p95_s), _num(_hit_rate(results), 3),
        "true" if s.complete else "false",
    ]  # fmt: skip


async def run_full_sweep(
    config: BenchConfig,
    cells: Sequence[Cell],
    plan: dict[int, list[Query]],
    out: IO[str],
    *,
    progress: Any,
    current: list[ClusterSystem],
) -> None:
    """Every cell, every level; one row written (and flushed) per level."""
    writer = csv.writer(out)
    writer.writerow(SWEEP_COLUMNS)
    out.flush()
    for cell in cells:
        serve = ["--max-batch-size", str(cell.max_batch_size),
                 "--prefill-batch-size", str(cell.prefill_batch_size)]  # fmt: skip
        system = ClusterSystem(
            cell.instances, config.model, config.policy, serve, config.server_start_timeout_s
        )
        system.name = cell.label
        current[:] = [system]
        progress.message(f"[{cell.label}] starting {cell.instances} instance(s) behind nginx")
        try:
            await system.start()
            await system.warmup(config.params)
            for level, queries in plan.items():
                result = SweepResult()
                summary = await run_level(system, queries, level, config.params, result, progress)
                writer.writerow(_row(cell, summary, result.queries))
                out.flush()
        finally:
            await system.close()
            current.clear()


def run_full(config: BenchConfig, plan: dict[int, list[Query]], name: str) -> int:
    """The ``--full-sweep`` command: 0 done, 130 interrupted (the rows so far are kept)."""
    cells = grid(config.instances or (1,), config.max_batch_sizes, config.prefill_batch_sizes)
    paths = output_paths(config.out_dir, datetime.now())
    csv_path = paths.summary_csv.with_name(paths.summary_csv.name.replace("_summary", "_sweep"))
    progress = make_progress(config.progress_interval)
    current: list[ClusterSystem] = []

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        with csv_path.open("x", newline="", encoding="utf-8") as fh:
            task = asyncio.create_task(
                run_full_sweep(config, cells, plan, fh, progress=progress, current=current)
            )
            hits = 0

            def on_signal() -> None:
                nonlocal hits
                hits += 1
                if hits == 1:
                    progress.message("interrupted: stopping; the rows so far are kept")
                    task.cancel()
                else:
                    for s in current:
                        s.kill()
                    os._exit(130)

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, on_signal)
            try:
                await task
                return True
            except asyncio.CancelledError:
                return False
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)

    finished = asyncio.run(main())
    progress.close()
    print(f"wrote: {csv_path}")
    with csv_path.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows:
        _plot(rows, csv_path.with_suffix(".png"), f"{config.model}: full sweep")
        print(_rows_table(_ranked(rows, "throughput_tps", 10)))
    return 0 if finished else 130


def _plot(rows: list[dict[str, str]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    try:
        keys = list(dict.fromkeys((r["instances"], r["max_batch_size"], r["prefill_batch_size"])
                                  for r in rows))  # fmt: skip
        for n, b, p in keys:
            pts = sorted((int(r["concurrency"]), float(r["throughput_tps"])) for r in rows
                         if (r["instances"], r["max_batch_size"], r["prefill_batch_size"])
                         == (n, b, p) and r["throughput_tps"])  # fmt: skip
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", label=f"{n} inst, mbs {b}, pbs {p}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("request concurrency")
        ax.set_ylabel("output tokens / s")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(title)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def _ranked(rows: list[dict[str, str]], field: str, count: int) -> list[dict[str, str]]:
    def key(row: dict[str, str]) -> float:
        try:
            return float(row[field])
        except (TypeError, ValueError):
            return float("-inf")  # blank or not a number: last

    return sorted(rows, key=key, reverse=True)[:count]


def top_rows(path: Path, field: str, count: int) -> list[dict[str, str]]:
    """The ``count`` rows of the CSV at ``path`` with the largest ``field``."""
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or field not in reader.fieldnames:
            raise KeyError(f"{path} has no column {field!r}; columns: {reader.fieldnames}")
        return _ranked(list(reader), field, count)


def top_command(path: str, field: str, count: int) -> int:
    """``abstractcore bench top``: print the ranking; 2 on a missing file or column."""
    try:
        rows = top_rows(Path(path), field, count)
    except (OSError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(_rows_table(rows) if rows else _markdown([field], []))
    return 0


def _rows_table(rows: list[dict[str, str]]) -> str:
    """CSV rows (all with the same columns) as a Markdown table."""
    header = list(rows[0])
    return _markdown(header, [[r[h] for h in header] for r in rows])
