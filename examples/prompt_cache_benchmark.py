"""Prompt-cache benchmark: multi-turn TTFT, shared-prefix throughput, peak memory on reuse.

    python examples/prompt_cache_benchmark.py                          # all three parts
    python examples/prompt_cache_benchmark.py --parts multiturn memory
    python examples/prompt_cache_benchmark.py --parts shared-prefix --no-mlx-lm-server

Prints a JSON report and writes it under test_results/prompt_cache/. See docs/concurrency.md.
"""

from __future__ import annotations

import sys

from abstractcore.bench.cache_bench import main

if __name__ == "__main__":
    sys.exit(main())
