"""The sweep as a picture: throughput, per-query speed and TTFT against concurrency."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .metrics import LevelSummary

__all__ = ["plot_summaries"]


def plot_summaries(summaries: Sequence[LevelSummary], path: Path, title: str) -> None:
    """Write a four-panel PNG, one line per system, log-2 concurrency axis."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    # (title, y label, value, log y): TTFT spans seconds to minutes (a serialized queue).
    panels: list[tuple[str, str, Callable[[LevelSummary], float | None], bool]] = [
        (
            "Aggregate throughput",
            "output tokens / s (all queries)",
            lambda s: s.throughput_tok_s,
            False,
        ),
        (
            "Per-query speed",
            "output tokens / s (one query)",
            lambda s: s.per_query_tok_s_avg,
            False,
        ),
        ("Time to first token (p50)", "TTFT (s, log scale)", lambda s: s.ttft_p50_s, True),
        # Streaming systems only: a system awaited whole answers has no inter-token gaps.
        ("Inter-token latency (p95)", "seconds between tokens", lambda s: s.itl_p95_s, False),
    ]
    systems = list(dict.fromkeys(s.system for s in summaries))
    levels = sorted({s.concurrency for s in summaries})
    fig, axes = plt.subplots(1, len(panels), figsize=(20, 4.8), constrained_layout=True)
    try:
        for ax, (name, ylabel, value, log_y) in zip(axes, panels):
            for system in systems:
                pts = sorted(
                    (s.concurrency, v)
                    for s in summaries
                    if s.system == system and (v := value(s)) is not None and (v > 0 or not log_y)
                )
                if pts:
                    xs, ys = zip(*pts)
                    # one colour per system in every panel, even where some have no points
                    ax.plot(xs, ys, marker="o", label=system, color=f"C{systems.index(system)}")
            ax.set_xscale("log", base=2)
            ax.set_xticks(levels, [str(c) for c in levels])
            ax.set_xlabel("concurrency (requests in flight)")
            ax.set_ylabel(ylabel)
            ax.set_title(name)
            if log_y:
                ax.set_yscale("log")
            else:
                ax.set_ylim(bottom=0)
            ax.grid(True, which="both" if log_y else "major", alpha=0.3)
            if ax.lines:
                ax.legend()
            else:  # e.g. inter-token latency when no system streamed
                ax.text(0.5, 0.5, "not measured in this run", ha="center", transform=ax.transAxes)
        fig.suptitle(title)
        with path.open("xb") as fh:  # never overwrite an earlier run's plot
            fig.savefig(fh, format="png", dpi=110)
    finally:
        plt.close(fig)
