"""Per-query measurements and the per-level summary computed from them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LevelSummary", "QueryResult", "percentile", "summarize", "throughput"]


@dataclass(frozen=True)
class QueryResult:
    """One measured request, timed client-side from submission."""

    system: str
    concurrency: int
    query_index: int
    prompt_id: str
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    ttft_s: float | None = None
    duration_s: float = 0.0
    finish_reason: str | None = None
    error: str | None = None
    #: For a query that asked for a schema: whether the answer is a valid object of it.
    valid: bool | None = None
    #: Seconds between consecutive content chunks as the client received them (streaming
    #: systems only; empty for whole answers): the inter-token latency the user sees.
    gaps_s: tuple[float, ...] = ()

    @property
    def max_gap_s(self) -> float | None:
        """The longest stall of this stream after its first token."""
        return max(self.gaps_s) if self.gaps_s else None

    @property
    def ok(self) -> bool:
        """True when the request finished without an error."""
        return self.error is None

    @property
    def decode_tok_s(self) -> float | None:
        """Tokens after the first, over the time after the first: (n - 1) / (duration - TTFT)."""
        if self.ttft_s is None or self.output_tokens < 2:
            return None
        span = self.duration_s - self.ttft_s
        return (self.output_tokens - 1) / span if span > 0 else None

    @property
    def per_query_tok_s(self) -> float | None:
        """Output tokens over the whole request duration (what one user sees)."""
        if not self.ok or self.duration_s <= 0:
            return None
        return self.output_tokens / self.duration_s


@dataclass(frozen=True)
class LevelSummary:
    """Aggregates for one system at one concurrency level."""

    system: str
    concurrency: int
    queries: int
    completed: int
    errors: int
    wall_s: float
    prompt_tokens: int
    output_tokens: int
    throughput_tok_s: float
    ttft_avg_s: float | None
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    decode_tok_s_avg: float | None
    per_query_tok_s_avg: float | None
    outside_model_share: float | None = None
    complete: bool = True
    #: Completed queries that asked for a schema, and how many of their answers validated.
    structured: int = 0
    valid: int = 0
    #: Inter-token latency over every gap of every completed stream, and the longest stall.
    itl_p50_s: float | None = None
    itl_p95_s: float | None = None
    max_stall_s: float | None = None
    #: The most memory the system held during the level: MLX's active memory for an
    #: in-process engine (the process's, so other in-process systems' weights count too), the
    #: server process's resident set for a server the benchmark started; None if unknown.
    peak_memory_bytes: int | None = None
    #: The MLX engine's largest KV reservation during the level (memory_plan.py).
    peak_kv_reserved_bytes: int | None = None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between ranks; None when empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    data = sorted(values)
    if not data:
        return None
    rank = (len(data) - 1) * q / 100
    lo, hi = math.floor(rank), math.ceil(rank)
    return data[lo] + (data[hi] - data[lo]) * (rank - lo)


def throughput(output_tokens: int, wall_s: float) -> float:
    """Aggregate tokens per second: all output tokens over the level's wall time."""
    return output_tokens / wall_s if wall_s > 0 else 0.0


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(
    system: str,
    concurrency: int,
    results: Sequence[QueryResult],
    wall_s: float,
    *,
    queries: int | None = None,
    outside_model_share: float | None = None,
    complete: bool = True,
    peak_memory_bytes: int | None = None,
    peak_kv_reserved_bytes: int | None = None,
) -> LevelSummary:
    """Summarize one level; failed requests count as errors and add no tokens or timings."""
    ok = [r for r in results if r.ok]
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    decode = [v for v in (r.decode_tok_s for r in ok) if v is not None]
    per_query = [v for v in (r.per_query_tok_s for r in ok) if v is not None]
    out_tokens = sum(r.output_tokens for r in ok)
    gaps = [g for r in ok for g in r.gaps_s]
    return LevelSummary(
        system=system,
        concurrency=concurrency,
        queries=len(results) if queries is None else queries,
        completed=len(ok),
        errors=len(results) - len(ok),
        wall_s=wall_s,
        prompt_tokens=sum(r.prompt_tokens for r in ok),
        output_tokens=out_tokens,
        throughput_tok_s=throughput(out_tokens, wall_s),
        ttft_avg_s=_mean(ttfts),
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p95_s=percentile(ttfts, 95),
        decode_tok_s_avg=_mean(decode),
        per_query_tok_s_avg=_mean(per_query),
        outside_model_share=outside_model_share,
        complete=complete,
        structured=sum(r.valid is not None for r in ok),
        valid=sum(r.valid is True for r in ok),
        itl_p50_s=percentile(gaps, 50),
        itl_p95_s=percentile(gaps, 95),
        max_stall_s=max(gaps) if gaps else None,
        peak_memory_bytes=peak_memory_bytes,
        peak_kv_reserved_bytes=peak_kv_reserved_bytes,
    )
