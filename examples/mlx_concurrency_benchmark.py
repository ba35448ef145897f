"""Concurrency benchmark: how throughput, per-query speed and TTFT change with concurrency.

    python examples/mlx_concurrency_benchmark.py                # default sweep, embedded model
    python examples/mlx_concurrency_benchmark.py --quick        # engine vs serial vs mlx-lm server
    python examples/mlx_concurrency_benchmark.py --help

Writes a summary CSV, a per-query CSV and a PNG under test_results/mlx_concurrency/ and prints
the results table. See docs/concurrency.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

from abstractcore.bench import main

PROMPTS = Path(__file__).resolve().parent / "assets" / "mlx_benchmark_prompts_128.json"

if __name__ == "__main__":
    sys.exit(main(default_prompts=PROMPTS))
