"""What a batch change costs from fresh pages and from reused ones (docs/concurrency.md,
"Freed memory kept for reuse").

    .venv/bin/python scripts/kv_filter_faults.py              # 32 rows, 256-token blocks
    .venv/bin/python scripts/kv_filter_faults.py --rows 16 --block 512

When a request leaves mlx-lm's batch, ``BatchKVCache.filter`` copies every layer's keys and
values without that row; when one joins, ``extend`` pads and concatenates them. This times
``filter`` (one row dropped) over SmolLM2-135M's 30 layers of (rows, 3, block, 64) float32
caches, and counts the page faults it takes (``getrusage``'s minor faults):

- first as the engine did before: glibc's default thresholds and ``malloc_trim(0)`` before
  each round, so the copy lands on pages the kernel must hand out again;
- then with malloc_trim.py's :func:`keep_freed_memory` and no trim, so it reuses the pages
  of the round before.

Each is the median of ``--rounds`` rounds, a fresh cache per round.
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import statistics
import time

from abstractcore.providers.mlx.blas import preload_blas

preload_blas()  # before MLX's first import: the BLAS the engine runs (docs/architecture.md)

import mlx.core as mx  # noqa: E402
from mlx_lm.models.cache import BatchKVCache  # noqa: E402

from abstractcore.providers.mlx.malloc_trim import keep_freed_memory  # noqa: E402

LAYERS, KV_HEADS, HEAD_DIM = 30, 3, 64  # SmolLM2-135M


def _caches(rows: int, block: int, used: int) -> list[BatchKVCache]:
    caches = []
    for _ in range(LAYERS):
        c = BatchKVCache([0] * rows)
        c.keys = mx.random.normal((rows, KV_HEADS, block, HEAD_DIM))
        c.values = mx.random.normal((rows, KV_HEADS, block, HEAD_DIM))
        c._idx, c.offset = used, mx.array([used] * rows)
        caches.append(c)
    mx.eval([(c.keys, c.values) for c in caches])
    return caches


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _rounds(rows: int, block: int, rounds: int, trim: bool) -> tuple[float, float]:
    """Median seconds and page faults of one filter over all layers."""
    libc = ctypes.CDLL(None)
    keep = list(range(rows - 1))
    times, faults = [], []
    for _ in range(rounds):
        caches = _caches(rows, block, block // 2)
        mx.clear_cache()  # as mlx-lm's prefill does: freed buffers go back to malloc
        if trim:
            libc.malloc_trim(0)
        f0, t = _faults(), time.perf_counter()
        for c in caches:
            c.filter(keep)
        mx.eval([(c.keys, c.values) for c in caches])
        times.append(time.perf_counter() - t)
        faults.append(_faults() - f0)
        del caches
    return statistics.median(times), statistics.median(faults)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--block", type=int, default=256, help="cache tokens allocated per row")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    size = 2 * LAYERS * args.rows * KV_HEADS * args.block * HEAD_DIM * 4
    print(f"filter {args.rows} -> {args.rows - 1} rows, {LAYERS} layers, "
          f"{size / 1e6:.0f} MB of keys and values")  # fmt: skip
    before = _rounds(args.rows, args.block, args.rounds, trim=True)
    print(f"trimmed before each round (the old default): {before[0] * 1e3:.0f} ms, "
          f"{before[1]:.0f} page faults")  # fmt: skip
    if not keep_freed_memory(2 << 30):
        print("not glibc: nothing more to compare")
        return
    _rounds(args.rows, args.block, 1, trim=False)  # the pages the next rounds reuse
    after = _rounds(args.rows, args.block, args.rounds, trim=False)
    print(f"freed memory kept (keep_freed_memory, no trim): {after[0] * 1e3:.0f} ms, "
          f"{after[1]:.0f} page faults")  # fmt: skip


if __name__ == "__main__":
    main()
