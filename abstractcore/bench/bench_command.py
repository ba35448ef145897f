"""Command line for the concurrency benchmark (``examples/mlx_concurrency_benchmark.py``)."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from ..cluster import POLICIES, find_nginx
from ..errors import AbstractCoreError, ConfigurationError
from .cluster_system import ClusterSystem, cluster_size
from .full_sweep import run_full
from .progress import make_progress
from .prompts import default_prompts_file, load_prompts
from .report import (
    format_comparison,
    format_table,
    machine_description,
    output_paths,
    write_meta,
    write_queries_csv,
    write_summary_csv,
)
from .runner import SweepResult, run_sweep
from .scenarios import Query, get_scenario, plan_levels, scenario_names
from .sweep_config import (
    DEFAULT_OUT_DIR,
    ENGINE,
    ENGINE_STREAM,
    INTERLEAVED,
    LLAMA_SERVER,
    LLAMA_SERVER_QUANT,
    MLX_LM_SERVER,
    ORDERS,
    SERIAL,
    BenchConfig,
    GenParams,
)
from .systems import System, build_system

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "main",
    "parse_config",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# `make bench`: a sweep that ends within ~5 minutes on a 2-core CPU, all three systems.
DEFAULTS: dict[str, Any] = {
    "queries": 16,
    "levels": [1, 4, 16],
    "max_output_tokens": 32,
    "temperature": 0.0,
    "compare": [SERIAL, MLX_LM_SERVER],
}
# Issue 3's throughput measurement: 32 prompts x 64 tokens, greedy, 1/8/32, three systems.
QUICK: dict[str, Any] = {
    "queries": 32,
    "levels": [1, 8, 32],
    "max_output_tokens": 64,
    "temperature": 0.0,
    "compare": [SERIAL, MLX_LM_SERVER],
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _float_at_least(minimum: float, strict: bool = False) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from exc
        if math.isnan(value) or value < minimum or (strict and value == minimum):
            op = ">" if strict else ">="
            raise argparse.ArgumentTypeError(f"expected a number {op} {minimum:g}, got {text!r}")
        return value

    return parse


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The benchmark's flags."""
    p = _Parser(
        prog=prog,
        description="Run distinct prompts through one model at several concurrency levels "
        "and report throughput, per-query speed and TTFT (CSV, PNG, table).",
    )
    p.add_argument("--provider", default="mlx", help="provider name (default: mlx)")
    p.add_argument("--profile", help="a configured provider profile to measure instead")
    p.add_argument("--model", default="smollm2-135m", help="model (default: smollm2-135m)")
    p.add_argument("--base-url", help="server URL for HTTP providers")
    p.add_argument("--queries", type=_positive_int, help="queries per level (distinct prompts)")
    p.add_argument(
        "--concurrency-levels", type=_positive_int, nargs="+", metavar="N",
        help="requests in flight per level, e.g. 1 2 4 8",
    )  # fmt: skip
    p.add_argument("--max-output-tokens", type=_positive_int, help="output tokens per query")
    p.add_argument("--prompts-file", type=Path, help='JSON list of prompts or {"prompts": [...]}')
    p.add_argument("--temperature", type=_float_at_least(0.0), help="0 = greedy (default)")
    p.add_argument("--seed", type=int, help="sampling seed passed with every query")
    p.add_argument(
        "--progress-interval", type=_float_at_least(0.0, strict=True), default=5.0,
        help="seconds between progress lines when not on a terminal (default: 5)",
    )  # fmt: skip
    p.add_argument(
        "--out-dir", type=Path, default=DEFAULT_OUT_DIR, help=f"default: {DEFAULT_OUT_DIR}"
    )
    p.add_argument(
        "--compare", nargs="*", metavar="SYSTEM",
        help=f"also measure: {SERIAL}, {MLX_LM_SERVER}, {LLAMA_SERVER} (llama.cpp on the "
        f"engine's weights), {LLAMA_SERVER_QUANT} (on the GGUF's quantization), {ENGINE}, "
        f"{ENGINE_STREAM}, or a profile name",
    )  # fmt: skip
    p.add_argument("--scenario", default="independent", help="workload (default: independent)")
    p.add_argument(
        "--instances", nargs="+", type=_positive_int, default=[], metavar="N",
        help="also measure N instances of the model behind nginx (system cluster-N), per N",
    )  # fmt: skip
    p.add_argument(
        "--policy", choices=POLICIES, default="affinity",
        help="nginx's routing for --instances (default: affinity)",
    )  # fmt: skip
    p.add_argument(
        "--full-sweep", action="store_true",
        help="instances x --max-batch-sizes x --prefill-batch-sizes x concurrency levels, "
        "one cluster per cell, one CSV row per level written as it is measured",
    )  # fmt: skip
    p.add_argument(
        "--max-batch-sizes", nargs="+", type=_positive_int, default=[32], metavar="N",
        help="--full-sweep: engine max_batch_size values (default: 32)",
    )  # fmt: skip
    p.add_argument(
        "--prefill-batch-sizes", nargs="+", type=_positive_int, default=[8], metavar="N",
        help="--full-sweep: prefill_batch_size values (default: 8)",
    )  # fmt: skip
    p.add_argument(
        "--quick", action="store_true",
        help="32 prompts x 64 tokens, greedy, concurrency 1 8 32; engine, serial, mlx-lm-server",
    )  # fmt: skip
    p.add_argument(
        "--order", choices=ORDERS, default=INTERLEAVED,
        help="interleaved (default): all systems loaded, each level run in rounds that "
        "alternate the systems, so they are compared under the same machine load; "
        "sequential: one system (one model in memory) at a time",
    )  # fmt: skip
    p.add_argument(
        "--server-start-timeout", type=_float_at_least(0.0, strict=True), default=180.0,
        help="seconds to wait for mlx-lm's server to load (default: 180)",
    )  # fmt: skip
    return p


def parse_config(
    argv: Sequence[str] | None = None,
    *,
    default_prompts: Path | None = None,
    prog: str | None = None,
) -> BenchConfig:
    """Flags -> a validated BenchConfig; bad input exits with code 2 and one line."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS

    def pick(name: str, value: Any) -> Any:
        return base[name] if value is None else value

    if args.scenario not in scenario_names():
        parser.error(
            f"unknown --scenario {args.scenario!r}; available: {', '.join(scenario_names())}"
        )
    return BenchConfig(
        prompts_file=args.prompts_file or default_prompts or default_prompts_file(),
        provider=args.provider,
        model=args.model,
        profile=args.profile,
        base_url=args.base_url,
        queries=pick("queries", args.queries),
        levels=tuple(sorted(set(pick("levels", args.concurrency_levels)))),
        params=GenParams(
            max_output_tokens=pick("max_output_tokens", args.max_output_tokens),
            temperature=pick("temperature", args.temperature),
            seed=args.seed,
        ),
        compare=tuple(_compare(args, base)),
        scenario=args.scenario,
        progress_interval=args.progress_interval,
        out_dir=args.out_dir,
        quick=args.quick,
        server_start_timeout_s=args.server_start_timeout,
        order=args.order,
        instances=tuple(dict.fromkeys(args.instances)),
        policy=args.policy,
        full_sweep=args.full_sweep,
        max_batch_sizes=tuple(dict.fromkeys(args.max_batch_sizes)),
        prefill_batch_sizes=tuple(dict.fromkeys(args.prefill_batch_sizes)),
    )


def _compare(args: argparse.Namespace, base: dict[str, Any]) -> list[str]:
    if args.compare is not None:
        return list(args.compare)
    # The MLX baselines only make sense next to the embedded engine on the same model.
    embedded = args.provider == "mlx" and not args.profile
    return list(base["compare"]) if embedded else []


def _build(name: str, config: BenchConfig) -> System:
    n = cluster_size(name)
    if n is None or name not in {f"cluster-{i}" for i in config.instances}:
        return build_system(name, config)
    # Every instance batches the whole level, as the embedded engine does (systems.py).
    serve = ["--max-batch-size", str(max(32, max(config.levels)))]
    return ClusterSystem(n, config.model, config.policy, serve, config.server_start_timeout_s)


def main(
    argv: Sequence[str] | None = None,
    *,
    default_prompts: Path | None = None,
    prog: str | None = None,
) -> int:
    """Run the benchmark; returns the process exit code (0, 1 failures, 2 usage, 130 Ctrl-C)."""
    name = prog or Path(sys.argv[0]).name
    config = parse_config(argv, default_prompts=default_prompts, prog=name)
    try:
        prompts = load_prompts(config.prompts_file)
        plan = plan_levels(get_scenario(config.scenario), prompts, config.queries, config.levels)
        if config.full_sweep:
            find_nginx()
            return run_full(config, plan, name)
        systems = [_build(n, config) for n in config.system_names]
        for system in systems:
            system.check()
    except ConfigurationError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_run(config, systems, plan, name))


async def _run(
    config: BenchConfig, systems: list[System], plan: dict[int, list[Query]], name: str
) -> int:
    progress = make_progress(config.progress_interval)
    result = SweepResult()
    loop = asyncio.get_running_loop()
    sweep = asyncio.create_task(run_sweep(config, systems, plan, progress, result))
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            result.interrupted = True
            progress.message("interrupted: stopping, writing what was measured so far")
            sweep.cancel()
        else:  # a second Ctrl-C: stop child processes now and leave
            for s in systems:
                s.kill()
            os._exit(EXIT_INTERRUPTED)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    started = datetime.now()
    load_before = _loadavg()
    error: AbstractCoreError | None = None
    try:
        await sweep
    except asyncio.CancelledError:
        if not result.interrupted:
            raise
    except ConfigurationError as exc:
        error = exc
    finally:
        progress.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if error is None or result.queries:  # a settings error before any query: one line only
        _write_outputs(config, result, started, load_before)
    if error is not None:
        print(f"{name}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if result.failures else EXIT_OK


def _loadavg() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _write_outputs(
    config: BenchConfig, result: SweepResult, started: datetime, load_before: list[float] | None
) -> None:
    paths = output_paths(config.out_dir, started)
    write_summary_csv(paths.summary_csv, result.summaries)
    write_queries_csv(paths.queries_csv, result.queries)
    meta = {
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now().isoformat(timespec="seconds"),
        "interrupted": result.interrupted,
        "failures": result.failures,
        "machine": machine_description(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_before": load_before,
        "loadavg_after": _loadavg(),
        "config": {k: v for k, v in asdict(config).items()},
    }
    write_meta(paths.meta_json, meta)
    files = [paths.summary_csv, paths.queries_csv, paths.meta_json]
    finished = [s for s in result.summaries if s.complete]  # a cut-short level would mislead
    if finished:
        from .plot import plot_summaries

        title = f"{config.profile or config.model} ({config.provider}) on {machine_description()}"
        plot_summaries(finished, paths.plot_png, title)
        files.insert(2, paths.plot_png)
    p = config.params
    print(
        f"\n## {config.profile or config.model}: {config.queries} queries x "
        f"{p.max_output_tokens} tokens, temperature {p.temperature:g}, {machine_description()}"
        + (" (INTERRUPTED: partial results)" if result.interrupted else "")
        + "\n"
    )
    print(format_table(result.summaries))
    comparison = format_comparison(result.summaries, config.primary_name)
    if comparison:
        print("\n" + comparison)
    for system, why in result.failures.items():
        print(f"\n{system}: not measured ({why})")
    print("\nwrote: " + ", ".join(str(f) for f in files), flush=True)


def run() -> NoReturn:
    """Entry point for scripts: ``sys.exit(main())``."""
    sys.exit(main())
