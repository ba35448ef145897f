"""Concurrency benchmark: distinct prompts through one model at several concurrency levels.

The library behind ``examples/mlx_concurrency_benchmark.py``: a sweep runner that keeps
exactly N requests in flight, per-query and per-level metrics, CSV / PNG / table output, and
the baselines it compares against (serialized ``mlx_lm`` generation, mlx-lm's own server).
"""

from __future__ import annotations

from .bench_command import main
from .metrics import LevelSummary, QueryResult, percentile, summarize, throughput
from .prompts import Prompt, load_prompts
from .runner import SweepResult, run_level, run_sweep
from .scenarios import Query, Scenario, get_scenario, register_scenario
from .sweep_config import BenchConfig, GenParams

__all__ = [
    "BenchConfig",
    "GenParams",
    "LevelSummary",
    "Prompt",
    "Query",
    "QueryResult",
    "Scenario",
    "SweepResult",
    "get_scenario",
    "load_prompts",
    "main",
    "percentile",
    "register_scenario",
    "run_level",
    "run_sweep",
    "summarize",
    "throughput",
]
