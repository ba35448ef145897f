"""Metric functions, tables and output files of abstractcore.bench, on known inputs."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

import pytest

from abstractcore.bench.metrics import QueryResult, percentile, summarize, throughput
from abstractcore.bench.report import (
    QUERY_COLUMNS,
    SUMMARY_COLUMNS,
    format_comparison,
    format_table,
    output_paths,
    write_queries_csv,
    write_summary_csv,
)
from abstractcore.bench.runner import outside_model_share


def _q(
    i: int, tokens: int, ttft: float | None, duration: float, error: str | None = None
) -> QueryResult:
    return QueryResult(
        system="engine", concurrency=2, query_index=i, prompt_id=f"p{i:03d}", prompt_tokens=10,
        output_tokens=tokens, ttft_s=ttft, duration_s=duration,
        finish_reason=None if error else "length", error=error,
    )  # fmt: skip


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_throughput_is_tokens_over_wall_time() -> None:
    assert throughput(100, 4.0) == 25.0
    assert throughput(100, 0.0) == 0.0


def test_query_rates() -> None:
    r = _q(0, 11, 1.0, 3.0)
    assert r.decode_tok_s == pytest.approx(5.0)  # (11 - 1) / (3 - 1)
    assert r.per_query_tok_s == pytest.approx(11 / 3)
    assert _q(1, 1, 1.0, 3.0).decode_tok_s is None  # one token has no decode phase
    assert _q(2, 5, None, 3.0).decode_tok_s is None


def test_summarize_counts_errors_apart() -> None:
    results = [
        _q(0, 10, 1.0, 2.0),
        _q(1, 20, 3.0, 4.0),
        _q(2, 0, None, 0.5, error="ProviderAPIError: boom"),
    ]
    s = summarize("engine", 2, results, wall_s=5.0)
    assert (s.queries, s.completed, s.errors) == (3, 2, 1)
    assert s.output_tokens == 30 and s.prompt_tokens == 20
    assert s.throughput_tok_s == pytest.approx(6.0)
    assert s.ttft_avg_s == pytest.approx(2.0)
    assert s.ttft_p50_s == pytest.approx(2.0)
    assert s.ttft_p95_s == pytest.approx(2.9)
    assert s.decode_tok_s_avg == pytest.approx((9 / 1 + 19 / 1) / 2)
    assert s.per_query_tok_s_avg == pytest.approx((10 / 2 + 20 / 4) / 2)


def test_outside_model_share_from_engine_stats() -> None:
    assert outside_model_share({"model_step_s": 1.0}, {"model_step_s": 1.9}, 1.0) == pytest.approx(
        0.1
    )
    assert outside_model_share(None, {"model_step_s": 1.0}, 1.0) is None
    assert outside_model_share({"steps": 1}, {"steps": 2}, 1.0) is None


def test_tables_are_markdown_with_ratios() -> None:
    a = summarize("engine", 8, [_q(0, 40, 0.5, 1.0)], wall_s=1.0)
    b = summarize("serial", 8, [_q(0, 40, 1.5, 4.0)], wall_s=4.0)
    table = format_table([a, b]).splitlines()
    assert table[0].startswith("| system | conc | queries | errors | wall s | tok/s |")
    assert len(table) == 4 and table[2].startswith("| engine |")
    cmp_ = format_comparison([a, b], "engine")
    assert "engine/serial" in cmp_ and "4.00x" in cmp_
    assert format_comparison([a], "engine") == ""


def test_outputs_never_overwrite(tmp_path: Path) -> None:
    now = datetime(2030, 1, 2, 3, 4, 5)
    first = output_paths(tmp_path, now)
    assert first.summary_csv.name == "bench_20300102-030405_summary.csv"
    write_summary_csv(first.summary_csv, [summarize("engine", 1, [_q(0, 4, 0.1, 0.5)], 0.5)])
    second = output_paths(tmp_path, now)
    assert second.summary_csv.name == "bench_20300102-030405-2_summary.csv"
    with pytest.raises(FileExistsError):
        write_summary_csv(first.summary_csv, [])
    write_queries_csv(second.queries_csv, [_q(0, 4, 0.1, 0.5)])
    with first.summary_csv.open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == SUMMARY_COLUMNS and len(rows) == 2
    with second.queries_csv.open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == QUERY_COLUMNS and rows[1][3] == "p000"


def test_inter_token_latency_pools_every_gap_and_keeps_the_longest_stall(tmp_path: Path) -> None:
    import csv

    from abstractcore.bench.report import format_table, write_queries_csv, write_summary_csv

    streamed = [
        QueryResult("s", 2, 0, "a", output_tokens=3, duration_s=1.0, gaps_s=(0.1, 0.2)),
        QueryResult("s", 2, 1, "b", output_tokens=3, duration_s=1.0, gaps_s=(0.3, 0.9)),
        QueryResult("s", 2, 2, "c", error="boom", gaps_s=(5.0,)),  # failed: not counted
    ]
    s = summarize("s", 2, streamed, 2.0)
    assert s.itl_p50_s == pytest.approx(0.25) and s.max_stall_s == pytest.approx(0.9)
    assert s.itl_p95_s == pytest.approx(0.81)
    table = format_table([s, summarize("w", 2, [QueryResult("w", 2, 0, "a")], 1.0)])
    assert "ITL p50/p95 ms" in table and "250/810" in table and "| - |" in table.replace("  ", "")
    write_summary_csv(tmp_path / "s.csv", [s])
    write_queries_csv(tmp_path / "q.csv", streamed)
    with (tmp_path / "s.csv").open() as fh:
        row = next(csv.DictReader(fh))
    assert (row["itl_p50_s"], row["max_stall_s"]) == ("0.2500", "0.9000")
    with (tmp_path / "q.csv").open() as fh:
        assert [r["max_gap_s"] for r in csv.DictReader(fh)] == ["0.2000", "0.9000", "5.0000"]
