"""Structured-output benchmark on the embedded engine: validity, cost, compile time.

    python examples/mlx_structured_benchmark.py                    # all three parts
    python examples/mlx_structured_benchmark.py --parts cost --repeats 5
    python examples/mlx_structured_benchmark.py --parts validity --schemas 50

Prints a JSON report and writes it under test_results/structured/. See docs/concurrency.md.
"""

from __future__ import annotations

import sys

from abstractcore.bench.structured_bench import main

if __name__ == "__main__":
    sys.exit(main())
