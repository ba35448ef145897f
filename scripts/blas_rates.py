"""Float32 product rates under the BLAS the preload picks: the table behind docs/concurrency.md's
"OpenBLAS on AMD's AVX-512 cores".

    .venv/bin/python scripts/blas_rates.py
    ABSTRACTCORE_BLAS=mkl .venv/bin/python scripts/blas_rates.py
    OPENBLAS_CORETYPE=Haswell .venv/bin/python scripts/blas_rates.py

Each shape is ``a (m x k) . b^T`` with ``b`` in ``nn.Linear``'s (n x k) layout, as MLX calls
``cblas_sgemm`` for a model's dense layers: a large square product, a prefill-sized one, the
tied output projection of a 256-token prefill, and one projection of SmolLM2-135M's decode
step at 32, 8 and 1 rows. The best of ``--reps`` timings is kept (robust to interference).
"""

from __future__ import annotations

import argparse
import json
import time

from abstractcore.providers.mlx.blas import blas_info, preload_blas

preload_blas()  # before MLX's first import (docs/architecture.md)

import mlx.core as mx  # noqa: E402

SHAPES = ((1024, 1024, 1024), (320, 576, 1536), (256, 576, 49152),
          (32, 576, 1536), (8, 576, 1536), (1, 576, 1536))  # fmt: skip


def best_ms(m: int, k: int, n: int, reps: int) -> float:
    a = mx.random.normal((m, k), key=mx.random.key(0))
    b = mx.random.normal((n, k), key=mx.random.key(1))
    mx.eval(a, b)
    for _ in range(3):
        mx.eval(a @ b.T)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        mx.eval(a @ b.T)
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=10, help="timings per shape (default 10)")
    args = parser.parse_args()
    print(json.dumps(blas_info()))
    print("| m x k x n | ms | GFLOP/s |\n|---|---:|---:|")
    for m, k, n in SHAPES:
        ms = best_ms(m, k, n, args.reps)
        print(f"| {m} x {k} x {n} | {ms:.3f} | {2 * m * k * n / ms / 1e6:.1f} |")


if __name__ == "__main__":
    main()
