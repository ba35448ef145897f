"""The ``abstractcore`` command line: ``abstractcore models pull|list|path`` (and later ``serve``).

Each command group registers itself in :data:`_COMMAND_GROUPS`; heavy imports happen inside
the handlers, so ``abstractcore --help`` stays fast and needs no optional dependency.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from abstractcore.errors import AbstractCoreError

__all__ = ["build_parser", "main"]

#: Exit status for a usage error or an abstractcore error (argparse uses 2 as well).
EXIT_ERROR = 2


class _PlainProgress:
    """Progress as plain log lines (no TTY or no rich): one line per stage and per 10%."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._last: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        pct = int(100 * done / total) if total else 0
        step = pct // 10
        if self._last.get(stage) == step and done != total:
            return
        self._last[stage] = step
        if stage == "download" and total:
            text = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB"
        else:
            text = f"{done}/{total}" if total else str(done)
        print(f"{stage}: {pct:3d}% ({text})", file=self._stream, flush=True)

    def close(self) -> None:
        """Nothing to release."""


class _RichProgress:
    """Progress bars with rich (only used on a terminal)."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description:<9}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}"),
            console=Console(file=stream),
        )
        self._tasks: dict[str, Any] = {}
        self._progress.start()

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(stage, total=total, detail="")
        task = self._tasks[stage]
        detail = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB" if stage == "download" and total else ""
        self._progress.update(task, completed=done, total=total, detail=detail)

    def close(self) -> None:
        """Stop the live display."""
        self._progress.stop()


def _progress_display(stream: TextIO) -> _PlainProgress | _RichProgress:
    if stream.isatty():
        try:
            return _RichProgress(stream)
        except ImportError:
            pass
    return _PlainProgress(stream)


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _cmd_models_pull(args: argparse.Namespace) -> int:
    from abstractcore.providers.mlx.loading import resolve_model_path

    display = _progress_display(sys.stderr)
    try:
        path = resolve_model_path(args.name, dtype=args.dtype, progress=display, force=args.force)
    finally:
        display.close()
    print(path)
    return 0


def _cmd_models_path(args: argparse.Namespace) -> int:
    from abstractcore.providers.mlx.loading import cached_model_path

    path = cached_model_path(args.name, dtype=args.dtype)
    if path is None:
        pull = f"abstractcore models pull {args.name}" + (
            f" --dtype {args.dtype}" if args.dtype else ""
        )
        print(f"error: {args.name!r} is not available locally; run `{pull}`", file=sys.stderr)
        return 1
    print(path)
    return 0


def _cmd_models_list(args: argparse.Namespace) -> int:
    from abstractcore.providers.mlx.loading import ALIASES, cache_dir, cached_model_path

    for alias, model in ALIASES.items():
        path = cached_model_path(alias)
        state = str(path) if path is not None else "not pulled"
        print(f"{alias:<16} {model.description}\n{'':<16} {state}")
    root = cache_dir()
    converted = (
        sorted(p for p in root.glob("*") if (p / "config.json").is_file()) if root.is_dir() else []
    )
    print(f"\ncache: {root}")
    for path in converted:
        print(f"  {path.name:<48} {_dir_size(path) / 1e6:8.1f} MB")
    if not converted:
        print("  (empty)")
    return 0


def _add_models_group(commands: Any) -> None:
    from abstractcore.providers.mlx.gguf import DTYPES

    models = commands.add_parser("models", help="fetch, convert and locate MLX models")
    sub = models.add_subparsers(dest="models_command", required=True, metavar="{pull,list,path}")

    pull = sub.add_parser(
        "pull", help="download and convert a model ahead of time; prints its directory"
    )
    pull.add_argument(
        "name", help="alias (smollm2-135m), .gguf file, MLX directory or Hugging Face repo id"
    )
    pull.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="weights of a GGUF conversion "
        "(default: float32 on CPU, keep = stay quantized on Apple silicon)",
    )
    pull.add_argument("--force", action="store_true", help="redo the download and conversion")
    pull.set_defaults(handler=_cmd_models_pull)

    path = sub.add_parser(
        "path", help="print a model's local directory without downloading anything"
    )
    path.add_argument("name")
    path.add_argument("--dtype", choices=DTYPES, default=None)
    path.set_defaults(handler=_cmd_models_path)

    listing = sub.add_parser(
        "list", help="list the known aliases and the converted models in the cache"
    )
    listing.set_defaults(handler=_cmd_models_list)


def _add_serve_group(commands: Any) -> None:
    # argparse only; fastapi loads on run
    from abstractcore.server.serve_command import add_serve_parser

    add_serve_parser(commands)


def _add_cluster_group(commands: Any) -> None:
    from abstractcore.cluster.cluster_command import add_cluster_parser

    add_cluster_parser(commands)


def _add_bench_group(commands: Any) -> None:
    bench = commands.add_parser("bench", help="read the benchmarks' CSV files")
    sub = bench.add_subparsers(dest="bench_command", required=True, metavar="{top}")
    top = sub.add_parser("top", help="the best rows of a benchmark CSV by one column")
    top.add_argument("file", help="a CSV the benchmark wrote (a full sweep's, a summary)")
    top.add_argument("--field", default="throughput_tps", help="column to rank by")
    top.add_argument("--count", type=int, default=10, help="rows to show (default: 10)")

    def run(args: argparse.Namespace) -> int:
        from abstractcore.bench.full_sweep import top_command

        return top_command(args.file, args.field, args.count)

    top.set_defaults(handler=run)


# Command groups, each adding its sub-parser(s) with a `handler`.
_COMMAND_GROUPS: list[Callable[[Any], None]] = [
    _add_models_group,
    _add_serve_group,
    _add_cluster_group,
    _add_bench_group,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``abstractcore`` argument parser with every registered command group."""
    parser = argparse.ArgumentParser(prog="abstractcore", description="abstractcore command line")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_group in _COMMAND_GROUPS:
        add_group(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 with a one-line message on errors)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except AbstractCoreError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)  # always one line
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
