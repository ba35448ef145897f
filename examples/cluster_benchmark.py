"""Scale-out benchmark: instances behind nginx, prompt-cache affinity vs round-robin.

    python examples/cluster_benchmark.py                         # both parts
    python examples/cluster_benchmark.py --parts multiturn --instances 2
    python examples/cluster_benchmark.py --parts throughput --repeats 3

Prints a JSON report and writes it under test_results/cluster/. Needs nginx
(`apt-get install nginx`, `brew install nginx`). See docs/scale-out.md.
"""

from __future__ import annotations

import sys

from abstractcore.bench.cluster_bench import main

if __name__ == "__main__":
    sys.exit(main())
