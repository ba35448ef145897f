"""``abstractcore serve``: its flags, and building the app from them.

Importing this module is cheap (argparse only): the ``abstractcore`` command line adds the
``serve`` parser without needing fastapi or uvicorn, which load when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..providers.mlx.options import add_engine_arguments, engine_options_from_args

__all__ = ["API_KEY_ENV", "add_serve_arguments", "add_serve_parser", "main", "run_serve"]

API_KEY_ENV = "ABSTRACTCORE_API_KEY"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 0..65535, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` flags to ``parser``."""
    g = parser.add_argument_group("model")
    g.add_argument(
        "--provider", default=None, help="provider name (default: from config/env, else mlx)"
    )
    g.add_argument("--model", default=None, help="model id (default: the provider's default model)")
    g.add_argument("--profile", default=None, help="profile from abstractcore.toml")
    g.add_argument(
        "--alias",
        action="append",
        default=[],
        metavar="NAME",
        help="another accepted value of the request's `model` (repeatable)",
    )
    add_engine_arguments(parser.add_argument_group("MLX engine (EngineOptions; provider mlx)"))
    h = parser.add_argument_group("http")
    h.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    h.add_argument(
        "--port", type=_port, default=8000, help="port (default: 8000; 0 = any free port)"
    )
    h.add_argument(
        "--api-key",
        default=None,
        help=f"require this key (Bearer or x-api-key); default: ${API_KEY_ENV}, else no auth",
    )
    h.add_argument(
        "--max-output-tokens",
        type=_positive_int,
        default=None,
        help="cap on a request's output tokens (and the default when it asks none)",
    )
    h.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow browser requests from this origin (repeatable; off by default)",
    )
    h.add_argument(
        "--max-body-bytes",
        type=_positive_int,
        default=None,
        help="largest accepted request body (default: 4 MiB)",
    )
    h.add_argument(
        "--grace-period",
        type=_positive_float,
        default=30.0,
        help="seconds in-flight requests get to finish after SIGTERM (default: 30)",
    )
    h.add_argument(
        "--keepalive-interval",
        type=_positive_float,
        default=5.0,
        help="seconds of stream silence before a keep-alive comment (default: 5)",
    )
    h.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    h.add_argument("--access-log", action="store_true", help="log every request")


def add_serve_parser(commands: Any) -> None:
    """Register ``serve`` on the ``abstractcore`` sub-command set."""
    parser = commands.add_parser(
        "serve",
        help="serve a model over the OpenAI and Anthropic HTTP APIs",
        description=(
            "An OpenAI- and Anthropic-compatible HTTP server over one model of any provider."
        ),
    )
    add_serve_arguments(parser)
    parser.set_defaults(handler=run_serve)


def build_app(args: argparse.Namespace) -> Any:
    """The app for these flags; the model loads at startup (503 until it is ready)."""
    from ..errors import ConfigurationError

    try:
        from .app import create_app
        from .state import DEFAULT_MAX_BODY_BYTES
    except ImportError as exc:
        raise ConfigurationError(
            f"`abstractcore serve` needs {exc.name!r}; pip install 'abstractcore[server]'"
        ) from exc
    from ..factory import create_llm

    provider = args.provider
    if provider is None and args.profile is None and not os.environ.get("ABSTRACTCORE_PROVIDER"):
        provider = "mlx"
    options = engine_options_from_args(args)

    def load() -> Any:
        return create_llm(provider, args.model, profile=args.profile, **options)

    api_key = args.api_key if args.api_key is not None else (os.environ.get(API_KEY_ENV) or None)
    return create_app(
        load,
        api_key=api_key,
        model_aliases=args.alias,
        max_output_tokens_cap=args.max_output_tokens,
        max_body_bytes=args.max_body_bytes or DEFAULT_MAX_BODY_BYTES,
        cors_origins=args.cors_origin,
        keepalive_interval=args.keepalive_interval,
    )


def run_serve(args: argparse.Namespace) -> int:
    """Handler of ``abstractcore serve``: returns the process exit status."""
    app = build_app(args)
    from .lifecycle import serve

    # An application may configure logging; uvicorn sets up its own loggers only.
    logging.basicConfig(
        level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s"
    )
    return serve(
        app,
        host=args.host,
        port=args.port,
        grace_period=args.grace_period,
        log_level=args.log_level,
        access_log=args.access_log,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m abstractcore.server``: the same as ``abstractcore serve``."""
    from ..errors import AbstractCoreError

    parser = argparse.ArgumentParser(prog="abstractcore serve", description=__doc__)
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_serve(args)
    except AbstractCoreError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
