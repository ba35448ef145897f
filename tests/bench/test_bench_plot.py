"""The sweep's PNG: every panel drawn, also when a metric was not measured in the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from abstractcore.bench.metrics import LevelSummary
from abstractcore.bench.plot import plot_summaries

pytest.importorskip("matplotlib")


def _summary(system: str, concurrency: int, itl_p95_s: float | None) -> LevelSummary:
    return LevelSummary(
        system=system, concurrency=concurrency, queries=4, completed=4, errors=0, wall_s=2.0,
        prompt_tokens=40, output_tokens=64, throughput_tok_s=32.0 * concurrency,
        ttft_avg_s=0.2, ttft_p50_s=0.2, ttft_p95_s=0.3, decode_tok_s_avg=30.0,
        per_query_tok_s_avg=30.0 / concurrency, itl_p95_s=itl_p95_s,
    )  # fmt: skip


@pytest.mark.parametrize("streamed", [True, False])
def test_plot_is_written_without_warnings_whether_or_not_a_system_streamed(
    tmp_path: Path, streamed: bool
) -> None:
    # pyproject's filterwarnings = error: matplotlib's "No artists with labels" would fail here
    summaries = [_summary("engine", c, 0.05 if streamed else None) for c in (1, 8)]
    path = tmp_path / "plot.png"
    plot_summaries(summaries, path, "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
