"""Benchmark outputs: summary and per-query CSVs, a metadata JSON, and Markdown tables."""

from __future__ import annotations

import csv
import json
import os
import platform
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from .metrics import LevelSummary, QueryResult

__all__ = [
    "QUERY_COLUMNS",
    "SUMMARY_COLUMNS",
    "OutputPaths",
    "format_comparison",
    "format_table",
    "machine_description",
    "output_paths",
    "write_meta",
    "write_queries_csv",
    "write_summary_csv",
]

SUMMARY_COLUMNS = [
    "system", "concurrency", "queries", "completed", "errors", "wall_s",
    "prompt_tokens", "output_tokens", "throughput_tok_s",
    "ttft_avg_s", "ttft_p50_s", "ttft_p95_s",
    "decode_tok_s_avg", "per_query_tok_s_avg", "outside_model_share", "complete",
    "structured", "valid", "itl_p50_s", "itl_p95_s", "max_stall_s",
    "peak_memory_bytes", "peak_kv_reserved_bytes",
]  # fmt: skip

QUERY_COLUMNS = [
    "system", "concurrency", "query_index", "prompt_id", "prompt_tokens", "output_tokens",
    "cached_tokens", "ttft_s", "duration_s", "decode_tok_s", "per_query_tok_s",
    "finish_reason", "error", "valid", "max_gap_s",
]  # fmt: skip


@dataclass(frozen=True)
class OutputPaths:
    """Where one run's files go; the timestamp in the names keeps runs apart."""

    summary_csv: Path
    queries_csv: Path
    plot_png: Path
    meta_json: Path


def output_paths(out_dir: Path, now: datetime | None = None) -> OutputPaths:
    """Fresh, timestamped paths in ``out_dir`` that no earlier run used."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        base = f"bench_{stamp}" if n == 1 else f"bench_{stamp}-{n}"
        paths = OutputPaths(
            out_dir / f"{base}_summary.csv",
            out_dir / f"{base}_queries.csv",
            out_dir / f"{base}_plot.png",
            out_dir / f"{base}_meta.json",
        )
        if not any(p.exists() for p in vars(paths).values()):
            return paths
    raise FileExistsError(f"no free output name for {stamp} in {out_dir}")


@contextmanager
def _exclusive(path: Path) -> Any:
    # "x" mode: never overwrite a file another run wrote.
    with path.open("x", newline="", encoding="utf-8") as fh:
        yield fh


def _num(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def write_summary_csv(path: Path, summaries: Iterable[LevelSummary]) -> None:
    """One row per (system, concurrency level)."""
    with _exclusive(path) as fh:
        w = csv.writer(fh)
        w.writerow(SUMMARY_COLUMNS)
        for s in summaries:
            w.writerow([
                s.system, s.concurrency, s.queries, s.completed, s.errors, _num(s.wall_s),
                s.prompt_tokens, s.output_tokens, _num(s.throughput_tok_s, 2),
                _num(s.ttft_avg_s), _num(s.ttft_p50_s), _num(s.ttft_p95_s),
                _num(s.decode_tok_s_avg, 2), _num(s.per_query_tok_s_avg, 2),
                _num(s.outside_model_share), "true" if s.complete else "false",
                s.structured, s.valid, _num(s.itl_p50_s), _num(s.itl_p95_s), _num(s.max_stall_s),
                _int(s.peak_memory_bytes), _int(s.peak_kv_reserved_bytes),
            ])  # fmt: skip


def write_queries_csv(path: Path, results: Iterable[QueryResult]) -> None:
    """One row per measured query."""
    with _exclusive(path) as fh:
        w = csv.writer(fh)
        w.writerow(QUERY_COLUMNS)
        for r in results:
            w.writerow([
                r.system, r.concurrency, r.query_index, r.prompt_id, r.prompt_tokens,
                r.output_tokens, r.cached_tokens, _num(r.ttft_s), _num(r.duration_s),
                _num(r.decode_tok_s, 2), _num(r.per_query_tok_s, 2),
                r.finish_reason or "", r.error or "",
                "" if r.valid is None else str(r.valid).lower(), _num(r.max_gap_s),
            ])  # fmt: skip


def machine_description() -> str:
    """Platform and core count, for plot titles and metadata."""
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores"


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    """Run settings and machine state next to the CSVs (JSON)."""
    with _exclusive(path) as fh:
        json.dump(meta, fh, indent=2, default=str)
        fh.write("\n")


def _markdown(
    header: Sequence[str], rows: Sequence[Sequence[str]], out: IO[str] | None = None
) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]

    def line(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
            )
            + " |"
        )

    sep = (
        "|"
        + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths))
        + "|"
    )
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def _f(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(summaries: Sequence[LevelSummary]) -> str:
    """The per-level results as a Markdown table (the format docs/concurrency.md shows)."""
    header = [
        "system", "conc", "queries", "errors", "wall s", "tok/s", "TTFT avg s",
        "TTFT p50 s", "TTFT p95 s", "decode tok/s", "per-query tok/s", "ITL p50/p95 ms",
        "max stall s", "peak mem GB",
    ]  # fmt: skip
    structured = any(s.structured for s in summaries)
    if structured:
        header.append("valid JSON")
    rows = [
        [
            s.system + ("" if s.complete else " (partial)"), str(s.concurrency),
            f"{s.completed}/{s.queries}", str(s.errors), _f(s.wall_s, 1),
            _f(s.throughput_tok_s, 1), _f(s.ttft_avg_s, 2), _f(s.ttft_p50_s, 2),
            _f(s.ttft_p95_s, 2), _f(s.decode_tok_s_avg, 1), _f(s.per_query_tok_s_avg, 1),
            _itl(s), _f(s.max_stall_s, 2), _gb(s.peak_memory_bytes),
            *([f"{s.valid}/{s.structured}"] if structured else []),
        ]
        for s in summaries
    ]  # fmt: skip
    return _markdown(header, rows)


def _gb(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f}"


def _int(value: int | None) -> str:
    return "" if value is None else str(value)


def _itl(s: LevelSummary) -> str:
    if s.itl_p50_s is None or s.itl_p95_s is None:
        return "-"  # a system awaited whole answers: no tokens to time apart
    return f"{s.itl_p50_s * 1000:.0f}/{s.itl_p95_s * 1000:.0f}"


def format_comparison(summaries: Sequence[LevelSummary], primary: str) -> str:
    """Per level: tok/s and p50 TTFT of every system, and the primary's throughput ratios.

    Only complete levels are compared; "" when there is nothing to compare with.
    """
    done = [s for s in summaries if s.complete]
    systems = list(dict.fromkeys(s.system for s in done))
    others = [s for s in systems if s != primary]
    if primary not in systems or not others:
        return ""
    by_key = {(s.system, s.concurrency): s for s in done}
    header = ["conc", *(f"{s} tok/s" for s in systems), *(f"{primary}/{o}" for o in others)]
    header += [*(f"{s} p50 TTFT s" for s in systems), f"{primary} outside model steps"]
    rows = []
    for c in sorted({s.concurrency for s in done}):
        level = [by_key.get((s, c)) for s in systems]
        p = by_key.get((primary, c))
        row = [str(c), *(_f(x.throughput_tok_s, 1) if x else "-" for x in level)]
        for o in others:
            x = by_key.get((o, c))
            ratio = (
                p.throughput_tok_s / x.throughput_tok_s if p and x and x.throughput_tok_s else None
            )
            row.append("-" if ratio is None else f"{ratio:.2f}x")
        row += [_f(x.ttft_p50_s, 2) if x else "-" for x in level]
        share = p.outside_model_share if p else None
        row.append("-" if share is None else f"{share * 100:.1f}%")
        rows.append(row)
    return _markdown(header, rows)
