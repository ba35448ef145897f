"""Prometheus text exposition (format 0.0.4), written by hand: counters, gauges, histograms.

The server's metrics are few and fixed, so a small registry here replaces a dependency.
All updates happen on the event loop thread; rendering reads a consistent snapshot.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["CONTENT_TYPE", "Counter", "Gauge", "Histogram", "Registry", "ServerMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_labels(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    items = list(labels) + ([extra] if extra else [])
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _fmt_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _key(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError

    def render(self) -> list[str]:
        return self.header() + self.samples()


class Counter(_Metric):
    """A monotonically increasing count, optionally per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text)
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (>= 0) to the series named by ``labels``."""
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = _key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        """Current value of one series (0 when never incremented)."""
        return self._values.get(_key(labels), 0.0)

    def samples(self) -> list[str]:
        return [
            f"{self.name}{_fmt_labels(k)} {_fmt_value(v)}" for k, v in sorted(self._values.items())
        ]


class Gauge(_Metric):
    """A value read at scrape time from a callback (or set directly)."""

    kind = "gauge"

    def __init__(
        self, name: str, help_text: str, read: Callable[[], float | None] | None = None
    ) -> None:
        super().__init__(name, help_text)
        self._read = read
        self._value: float | None = None

    def set(self, value: float) -> None:
        """Set the value (used when there is no callback)."""
        self._value = value

    def samples(self) -> list[str]:
        value = self._read() if self._read is not None else self._value
        return [] if value is None else [f"{self.name} {_fmt_value(float(value))}"]


class Histogram(_Metric):
    """Cumulative buckets, sum and count, per label set."""

    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> None:
        super().__init__(name, help_text)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[Labels, list[float]] = {}  # bucket counts + [sum, count]

    def observe(self, value: float, **labels: str) -> None:
        """Record one observation."""
        key = _key(labels)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = [0.0] * (len(self.buckets) + 2)
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.buckets):  # above the last bound: only +Inf (the count) has it
            series[index] += 1
        series[-2] += value
        series[-1] += 1

    def count(self, **labels: str) -> int:
        """Number of observations in one series."""
        series = self._series.get(_key(labels))
        return 0 if series is None else int(series[-1])

    def samples(self) -> list[str]:
        out: list[str] = []
        for key, series in sorted(self._series.items()):
            running = 0.0
            for bound, n in zip(self.buckets, series):
                running += n
                labels = _fmt_labels(key, ("le", _fmt_value(bound)))
                out.append(f"{self.name}_bucket{labels} {_fmt_value(running)}")
            out.append(
                f"{self.name}_bucket{_fmt_labels(key, ('le', '+Inf'))} {_fmt_value(series[-1])}"
            )
            out.append(f"{self.name}_sum{_fmt_labels(key)} {_fmt_value(series[-2])}")
            out.append(f"{self.name}_count{_fmt_labels(key)} {_fmt_value(series[-1])}")
        return out


class Registry:
    """An ordered set of metrics rendered together."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def add(self, metric: _Metric) -> Any:
        """Register ``metric`` and return it."""
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} already registered")
        self._metrics[metric.name] = metric
        return metric

    def render(self, extra: Iterable[_Metric] = ()) -> str:
        """The exposition text of every metric (plus ``extra`` ones made at scrape time)."""
        lines: list[str] = []
        for metric in [*self._metrics.values(), *extra]:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


# Engine stats (provider.stats()) with a dedicated, stable metric name.
_ENGINE_GAUGES = {
    "queued": ("abstractcore_queue_depth", "Requests waiting for a slot in the engine."),
    "active": ("abstractcore_active_requests", "Requests being generated by the engine."),
    "mean_batch_size": ("abstractcore_mean_batch_size", "Mean rows per engine decode step so far."),
}
# Monotonic engine counts; everything else numeric is exported as a gauge.
_ENGINE_COUNTERS = frozenset(
    {
        "submitted",
        "finished",
        "cancelled",
        "errors",
        "rejected",
        "prompt_tokens",
        "generated_tokens",
        "steps",
    }
)
_COUNTER_SUFFIXES = ("_hits", "_misses", "_evictions", "_tokens", "_total")


def _engine_metrics(stats: Mapping[str, Any]) -> list[_Metric]:
    out: list[_Metric] = []
    numeric = {
        k: float(v)
        for k, v in stats.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    batch = numeric.get("batch_size", numeric.get("active"))
    if batch is not None:
        out.append(
            _Fixed("abstractcore_batch_size", "Rows in the engine's batch now.", "gauge", batch)
        )
    for key, value in sorted(numeric.items()):
        if key == "batch_size":
            continue
        if key in _ENGINE_GAUGES:
            name, help_text = _ENGINE_GAUGES[key]
            out.append(_Fixed(name, help_text, "gauge", value))
            continue
        base = _sanitize(key)
        if base.startswith("cache_"):  # prompt-cache stats: hits, bytes, entries...
            base = "prompt_" + base
        if key in _ENGINE_COUNTERS or key.endswith(_COUNTER_SUFFIXES):
            name = f"abstractcore_engine_{base.removesuffix('_total')}_total"
            out.append(_Fixed(name, f"Engine count {key!r}.", "counter", value))
        else:
            out.append(
                _Fixed(f"abstractcore_engine_{base}", f"Engine stat {key!r}.", "gauge", value)
            )
    return out


class ServerMetrics:
    """The server's metrics: requests by status, tokens, TTFT and latency, engine state."""

    def __init__(
        self, engine_stats: Callable[[], Mapping[str, Any] | None], in_flight: Callable[[], int]
    ) -> None:
        self._engine_stats = engine_stats
        r = self.registry = Registry()
        self.requests = r.add(
            Counter("abstractcore_requests_total", "HTTP API requests by endpoint and status.")
        )
        self.prompt_tokens = r.add(
            Counter("abstractcore_prompt_tokens_total", "Prompt tokens processed.")
        )
        self.completion_tokens = r.add(
            Counter("abstractcore_completion_tokens_total", "Tokens generated.")
        )
        self.cached_tokens = r.add(
            Counter(
                "abstractcore_cached_prompt_tokens_total",
                "Prompt tokens reused from the prompt cache.",
            )
        )
        self.ttft = r.add(
            Histogram(
                "abstractcore_time_to_first_token_seconds", "Time from request to first token."
            )
        )
        self.latency = r.add(
            Histogram("abstractcore_request_duration_seconds", "Time from request to last byte.")
        )
        r.add(
            Gauge(
                "abstractcore_requests_in_flight",
                "API requests the server is handling.",
                lambda: in_flight(),
            )
        )

    def record(
        self,
        endpoint: str,
        status: int,
        *,
        latency_s: float | None = None,
        ttft_s: float | None = None,
        usage: Any = None,
    ) -> None:
        """Account one finished request (timings and tokens only for successful ones)."""
        self.requests.inc(endpoint=endpoint, status=str(status))
        if status != 200:  # timings of rejected or failed requests would skew the histograms
            return
        if latency_s is not None:
            self.latency.observe(latency_s, endpoint=endpoint)
        if ttft_s is not None:
            self.ttft.observe(ttft_s, endpoint=endpoint)
        if usage is not None:
            self.prompt_tokens.inc(usage.prompt_tokens)
            self.completion_tokens.inc(usage.completion_tokens)
            self.cached_tokens.inc(usage.cached_tokens)

    def render(self) -> str:
        """The exposition text, engine stats included."""
        extra = _engine_metrics(self._engine_stats() or {})
        return self.registry.render(extra)


class _Fixed(_Metric):
    def __init__(self, name: str, help_text: str, kind: str, value: float) -> None:
        super().__init__(name, help_text)
        self.kind = kind
        self.value = value

    def samples(self) -> list[str]:
        return [f"{self.name} {_fmt_value(float(self.value))}"]


def _sanitize(key: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in key)
