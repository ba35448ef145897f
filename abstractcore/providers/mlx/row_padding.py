"""Row counts the BLAS multiplies fastest: the model's dense layers pad their rows up to them.

A decode step multiplies a (rows x hidden) activation by every weight matrix of the model,
one row per sequence in the batch. How long a product takes is far from proportional to its
rows: with OpenBLAS on this project's 2-core machine (float32), 28 rows against SmolLM2's
576 x 1536 projection took 0.54 ms and 32 rows 0.29 ms, its 49152-row output projection 19.5
ms for 28 rows and 11.4 ms for 32, and a whole decode step of 28 sequences 155 ms against
117 ms for 32. Continuous batching runs every row count from 1 to ``max_batch_size`` as
requests come and go, so at load the engine times the model's own weight shapes at each row
count (:func:`calibrate`) and pads a row count to a larger one that is clearly cheaper
(:func:`apply`): zero rows go in, their outputs are sliced off. Row ``i`` of a product
depends only on row ``i`` of its input, so the real rows are unchanged; the tests check that
greedy outputs stay identical.

Only ``nn.Linear`` and ``nn.Embedding.as_linear`` (tied output projections) of exact type are
padded, and only on the CPU, where the effect was measured. Everything here runs on the
engine thread.

Calibrating takes a few seconds (4.8 s for SmolLM2 on the 2-core machine), and what it
measures belongs to the machine, not to the process, so a table is kept on disk under
``<cache>/row_padding/`` (next to the models), keyed by the CPU, its core count, the BLAS
library, the MLX version, the device and the products' shapes: each later start on the same
machine reads it. A table measured while the machine was busy would be kept too, so
``ABSTRACTCORE_RECALIBRATE=1`` measures again and replaces it. A wrong table costs speed,
never correctness: padding leaves the real rows unchanged.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .cpuinfo import cpuinfo_field

__all__ = [
    "RECALIBRATE_ENV",
    "PaddingSwitch",
    "RowPadding",
    "apply",
    "calibrate",
    "padded_modules",
    "remove",
]

log = logging.getLogger(__name__)

#: Set to 1 to measure the table again (and replace the one kept on disk).
RECALIBRATE_ENV = "ABSTRACTCORE_RECALIBRATE"
#: Version of the on-disk tables; bump it when the calibration method changes.
_DISK_FORMAT = 1

#: Pad only when the larger row count costs at most this share of the smaller one.
MARGIN = 0.95
#: Timing repeats per (shape, row count); the minimum is kept (robust to interference).
REPEATS = 3
#: Seconds calibration may spend timing products (SmolLM2-135M's whole calibration took
#: 4.8 s on the 2-core machine, most of it inside this budget).
BUDGET_S = 4.0

_cache: dict[
    tuple[Any, ...], RowPadding
] = {}  # (device, ((shape, dtype), count)..., rows) -> table
_cache_lock = threading.Lock()


class RowPadding:
    """``pad_to[m]``: the row count an ``m``-row product runs at (``m`` itself if unpadded)."""

    def __init__(self, pad_to: Sequence[int]) -> None:
        self.pad_to = tuple(pad_to)

    @property
    def max_rows(self) -> int:
        """The largest row count the table covers; larger products are never padded."""
        return len(self.pad_to) - 1

    def padded(self) -> dict[int, int]:
        """The row counts that are padded, and what to."""
        return {m: p for m, p in enumerate(self.pad_to) if m and p != m}

    def run(self, x: Any, product: Callable[[Any], Any]) -> Any:
        """``product(x)`` with the rows of ``x`` (all but its last axis) padded per the table."""
        shape = x.shape
        m = x.size // shape[-1]
        if m >= len(self.pad_to) or self.pad_to[m] == m:
            return product(x)
        y = product(_mx().pad(x.reshape(m, shape[-1]), [(0, self.pad_to[m] - m), (0, 0)]))
        return y[:m].reshape(*shape[:-1], y.shape[-1])


def _nn() -> Any:
    import mlx.nn

    return mlx.nn


def _mx() -> Any:
    import mlx.core

    return mlx.core


def padded_modules(model: Any) -> list[Any]:
    """The modules :func:`apply` pads: every exact ``nn.Linear`` and ``nn.Embedding`` (and
    the ones it already made padded)."""
    nn = _nn()
    kinds = (nn.Linear, nn.Embedding, *_padded_classes.values())
    return [m for _, m in model.named_modules() if type(m) in kinds]


def calibrate(model: Any, max_rows: int, *, budget_s: float = BUDGET_S) -> RowPadding:
    """Time the model's weight shapes at 1..``max_rows`` rows and choose the padding.

    Each shape's time counts once per module that has it (an embedding counts once: it is
    the tied output projection of the models that use ``as_linear``). A row count is padded
    only when the larger one, with the cost of padding, takes below ``MARGIN`` of its time.
    Row counts are measured in increasing order until ``budget_s`` is spent (a large model's
    products are slow); the ones not reached are never padded. The measurements are cached
    per device, dtype and shapes (up to at least 32 rows), in the process and on disk: one
    calibration per machine and model kind, whatever each engine's ``max_batch_size``.
    """
    import mlx.core as mx

    counted: dict[tuple[tuple[int, ...], Any], int] = {}  # (shape, dtype) -> modules
    for mod in padded_modules(model):
        w = mod["weight"]
        kind = (tuple(int(d) for d in w.shape), w.dtype)
        counted[kind] = counted.get(kind, 0) + 1
    # A row count may be padded up to the next multiple of 16.
    limit = -(-max(max_rows, 32) // 16) * 16
    key = (str(mx.default_device()), tuple(sorted(counted.items(), key=str)), limit)
    with _cache_lock:
        table = _cache.get(key)
        if table is None:
            table = _cache[key] = _kept_or_measured(counted, limit, budget_s)
    return RowPadding(table.pad_to[: max_rows + 1])


def _kept_or_measured(
    counted: dict[tuple[tuple[int, ...], Any], int], limit: int, budget_s: float
) -> RowPadding:
    """The table kept on disk for this machine and these shapes, or a new measurement
    (which is then kept)."""
    disk_key = _disk_key(counted, limit, budget_s)
    path = _disk_path(disk_key)
    from .loading import TRUE_VALUES

    if os.environ.get(RECALIBRATE_ENV, "").strip().lower() not in TRUE_VALUES:
        table = _read_table(path, disk_key, limit)
        if table is not None:
            log.info("row padding table read from %s", path)
            return table
    t0 = time.perf_counter()
    table = _calibrate(counted, limit, budget_s)
    _write_table(path, disk_key, table, time.perf_counter() - t0)
    return table


def _cpu_name() -> str:
    name = cpuinfo_field("model name", "Model", "cpu model")
    return name or platform.processor() or "unknown"


def _disk_key(
    counted: dict[tuple[tuple[int, ...], Any], int], limit: int, budget_s: float
) -> dict[str, Any]:
    """Everything a table depends on, as JSON values."""
    import mlx.core as mx

    from . import blas_gemv, blas_small_rows
    from .blas import blas_info, preload_blas

    return {
        "format": _DISK_FORMAT,
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "blas": preload_blas() or "mlx's own",
        "blas_core": blas_info()["core"],  # OpenBLAS's kernels (OPENBLAS_CORETYPE can pick them)
        "gemv_forwarding": blas_gemv.forwarded_products() is not None,  # one-row products
        "small_rows": blas_small_rows.computed_products() is not None,  # products of <= 40 rows
        "mlx": importlib.metadata.version("mlx"),
        "device": str(mx.default_device()),
        "products": sorted([list(shape), str(dtype), n] for (shape, dtype), n in counted.items()),
        "limit": limit,
        "margin": MARGIN,
        "repeats": REPEATS,
        "budget_s": budget_s,
    }


def _disk_path(disk_key: dict[str, Any]) -> Path:
    from .cache_root import cache_root

    digest = hashlib.sha256(json.dumps(disk_key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_root() / "row_padding" / f"{digest}.json"


def _read_table(path: Path, disk_key: dict[str, Any], limit: int) -> RowPadding | None:
    """The kept table, or None when there is none or it does not hold up (then it is
    measured again and replaced)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring the unreadable row padding table %s: %s", path, exc)
        return None
    pad_to = data.get("pad_to") if isinstance(data, dict) else None
    if not (
        isinstance(pad_to, list)
        and data.get("key") == disk_key
        and 2 <= len(pad_to) <= limit + 1
        and all(type(p) is int and m <= p < len(pad_to) for m, p in enumerate(pad_to))
        and pad_to[:2] == [0, 1]
    ):
        log.warning("ignoring the row padding table %s: it does not match this machine", path)
        return None
    return RowPadding(pad_to)


def _write_table(path: Path, disk_key: dict[str, Any], table: RowPadding, took_s: float) -> None:
    data = {
        "key": disk_key,
        "pad_to": list(table.pad_to),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "took_s": round(took_s, 2),
    }
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, path)  # atomic: a concurrent start reads the old table or the new one
    except OSError as exc:
        log.warning("could not keep the row padding table in %s: %s", path, exc)
        tmp.unlink(missing_ok=True)


def _calibrate(
    counted: dict[tuple[tuple[int, ...], Any], int], limit: int, budget_s: float
) -> RowPadding:
    """The table for 1..``limit`` rows (what the budget reached).

    The products use random matrices of the weights' shapes and dtypes, not the weights:
    timing depends only on shapes, and calibrating on the model's own weight arrays left
    the engine's later single-stream decode 4-6% slower here (measured three times against
    random stand-ins, which left it unchanged; the cause inside MLX is not known).
    """
    import mlx.core as mx

    groups = [(mx.random.normal(shape, dtype=dtype), n) for (shape, dtype), n in counted.items()]
    mx.eval([w for w, _ in groups])
    start = time.perf_counter()
    cost = [0.0, 0.0]  # cost[m]: the dense products of one forward pass at m rows
    for m in range(2, limit + 1):
        if time.perf_counter() - start > budget_s:
            break
        cost.append(sum(n * _time_product(w, m, m, n) for w, n in groups))
    # What padding itself costs (a pad and a slice per product), measured once.
    w, n = max(groups, key=lambda g: g[1])
    overhead = max(0.0, _time_product(w, 8, 16, n) - _time_product(w, 16, 16, n))
    n_products = sum(n for _, n in groups)
    del groups, w
    mx.clear_cache()  # hand the stand-ins' memory back
    # A single row is never padded: its products take the matrix-vector path, and the
    # engine's lone request then computes exactly what mlx_lm.generate computes.
    pad_to = list(range(len(cost)))
    for m in range(2, len(pad_to)):
        best = min(range(m, len(cost)), key=lambda p: cost[p])
        if best != m and cost[best] + n_products * overhead <= MARGIN * cost[m]:
            pad_to[m] = best
    return RowPadding(pad_to)


def _time_product(w: Any, rows: int, padded_to: int, count: int) -> float:
    """Seconds per product of ``rows`` rows with ``w.T``, computed at ``padded_to`` rows the
    way :meth:`RowPadding.run` does: up to 8 of them are evaluated together, as in a forward
    pass (which amortizes the per-evaluation overhead), and the fastest of a few runs is kept.
    """
    import mlx.core as mx

    x = mx.random.normal((rows, w.shape[1]), dtype=w.dtype)
    pad = [(0, padded_to - rows), (0, 0)]
    k = max(1, min(count, 8))

    def products() -> list[Any]:
        if padded_to == rows:
            return [x @ w.T for _ in range(k)]
        return [(mx.pad(x, pad) @ w.T)[:rows] for _ in range(k)]

    mx.eval(x, products())  # warm: allocation and any first-call setup
    best = float("inf")
    for _ in range(REPEATS if k > 1 else 1):  # a lone product is a large one: steady
        t0 = time.perf_counter()
        mx.eval(products())
        best = min(best, time.perf_counter() - t0)
    return best / k


class _PaddedLinear:
    """Mixed into ``nn.Linear``: the product runs at the padded row count."""

    row_padding: RowPadding

    def __call__(self, x: Any) -> Any:
        return self.row_padding.run(x, super().__call__)  # type: ignore[misc]


class _PaddedEmbedding:
    """Mixed into ``nn.Embedding``: the tied output projection runs padded."""

    row_padding: RowPadding

    def as_linear(self, x: Any) -> Any:
        return self.row_padding.run(x, super().as_linear)  # type: ignore[misc]


_padded_classes: dict[Any, Any] = {}


def _padded_class(base: Any) -> Any:
    """``base`` with its product padded (made on first use: mlx.nn is imported lazily)."""
    cls = _padded_classes.get(base)
    if cls is None:
        mixin = _PaddedEmbedding if issubclass(base, _nn().Embedding) else _PaddedLinear
        cls = _padded_classes[base] = type(f"RowPadded{base.__name__}", (mixin, base), {})
    return cls


def apply(model: Any, table: RowPadding) -> int:
    """Make the model's dense layers pad their rows per ``table``; returns how many.

    Each module's class is swapped (compat.py) for a subclass that pads: its weights, their
    names and the parameter tree stay exactly as they are (nothing is copied or
    re-initialised).
    """
    from .compat import set_layer_class

    mods = padded_modules(model)
    for mod in mods:
        if type(mod) not in _padded_classes.values():
            set_layer_class(mod, _padded_class(type(mod)))
        mod.row_padding = table  # not an array: a plain attribute, outside the parameters
    return len(mods)


def remove(model: Any) -> int:
    """Undo :func:`apply`: the layers get their own classes back (and no padding overhead:
    the engine's lone request, whose single row is never padded, runs them plain)."""
    from .compat import set_layer_class

    plain = {padded: base for base, padded in _padded_classes.items()}
    mods = [m for _, m in model.named_modules() if type(m) in plain]
    for mod in mods:
        set_layer_class(mod, plain[type(mod)])
    return len(mods)


class PaddingSwitch:
    """Whether the model's layers pad right now: batch steps run them padded, a solo step
    plain (a single row is never padded, and the padding layer's Python costs ~1.5 ms per
    step)."""

    def __init__(self, model: Any, table: RowPadding | None) -> None:
        self._model = model
        self.table = table
        self.on = False
        self.use(table is not None)

    def use(self, on: bool) -> None:
        """Pad (``on``) or run the plain layers, swapping only when that changes."""
        if self.table is None or on is self.on:
            return
        if on:
            apply(self._model, self.table)
        else:
            remove(self._model)
        self.on = on
