"""``abstractcore cluster up | status | down``: several servers behind nginx.

``up`` runs in the foreground until Ctrl-C or SIGTERM (or ``cluster down`` from another
shell), then stops everything it started. Its state lives in a run directory
(``--run-dir``, default ``<cache>/abstractcore/clusters/<port>``): the generated
``nginx.conf``, nginx's and each instance's logs, and ``cluster.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .fleet import Cluster, health_of, read_record
from .nginx_conf import POLICIES

__all__ = ["add_cluster_parser", "default_run_dir"]


def default_run_dir(port: int) -> Path:
    """Where a cluster on ``port`` keeps its files unless told otherwise."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "abstractcore" / "clusters" / str(port)


def _run_dir(args: argparse.Namespace) -> Path:
    return Path(args.run_dir) if args.run_dir else default_run_dir(args.port)


def _serve_args(args: argparse.Namespace) -> list[str]:
    out: list[str] = []
    for flag in ("provider", "model", "profile"):
        value = getattr(args, flag)
        if value:
            out += [f"--{flag}", value]
    extra = list(args.serve_args or [])
    return out + (extra[1:] if extra[:1] == ["--"] else extra)


def _cmd_up(args: argparse.Namespace) -> int:
    cluster = Cluster(
        _run_dir(args),
        instances=args.instances,
        upstreams=args.upstream,
        serve_args=_serve_args(args),
        host=args.host,
        port=args.port,
        policy=args.policy,
        start_timeout_s=args.start_timeout,
        grace_period_s=args.grace_period,
    )

    def stop_on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        record = cluster.start()
        print(f"abstractcore cluster: {record.url} ({record.policy}) -> "
              f"{', '.join(record.upstreams)}; files in {cluster.run_dir}", flush=True)  # fmt: skip
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("abstractcore cluster: stopping", file=sys.stderr, flush=True)
        return 0
    finally:
        cluster.stop()
        signal.signal(signal.SIGTERM, previous)


def _cmd_status(args: argparse.Namespace) -> int:
    record = read_record(_run_dir(args))
    print(f"{record.url} ({record.policy}), owner pid {record.owner_pid}")
    print(f"{'upstream':<22} {'status':<9} {'active':>6} {'queued':>6} {'in_flight':>9}")
    down = 0
    for upstream in record.upstreams:
        h = health_of(upstream)
        down += h.get("status") != "ok"
        print(f"{upstream:<22} {h.get('status', '?'):<9} {h.get('active', '-'):>6} "
              f"{h.get('queued', '-'):>6} {h.get('in_flight', '-'):>9}")  # fmt: skip
    return 1 if down else 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmd_down(args: argparse.Namespace) -> int:
    run_dir = _run_dir(args)
    record = read_record(run_dir)
    if _alive(record.owner_pid):  # `cluster up` stops what it started
        os.kill(record.owner_pid, signal.SIGTERM)
        deadline = time.monotonic() + args.grace_period + 15.0
        while _alive(record.owner_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    leftovers = [p for p in [record.nginx_pid, *record.instance_pids] if p and _alive(p)]
    for pid in leftovers:  # its owner died without cleaning up: stop them here
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        (run_dir / "cluster.json").unlink()
    print(f"abstractcore cluster: stopped {record.url}")
    return 0


def add_cluster_parser(commands: Any) -> None:
    """Register ``cluster`` and its sub-commands on the ``abstractcore`` command set."""
    parser = commands.add_parser("cluster", help="several servers behind nginx")
    sub = parser.add_subparsers(dest="cluster_command", required=True, metavar="{up,status,down}")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--port", type=int, default=8080, help="nginx's port (default: 8080)")
        p.add_argument("--run-dir", default=None, help="the cluster's files (default: per port)")
        p.add_argument(
            "--grace-period",
            type=float,
            default=30.0,
            help="seconds instances get to drain when stopped (default: 30)",
        )

    up = sub.add_parser("up", help="start N instances and nginx; stop them on Ctrl-C/SIGTERM")
    common(up)
    up.add_argument("--instances", type=int, default=0, help="local instances to start")
    up.add_argument("--upstream", action="append", default=[], metavar="HOST:PORT",
                    help="a running server to front as well (repeatable)")  # fmt: skip
    up.add_argument("--policy", choices=POLICIES, default="affinity")
    up.add_argument("--host", default="127.0.0.1", help="nginx's bind address")
    up.add_argument("--provider", default=None)
    up.add_argument("--model", default=None)
    up.add_argument("--profile", default=None)
    up.add_argument("--start-timeout", type=float, default=300.0,
                    help="seconds each instance gets to load its model")  # fmt: skip
    up.add_argument(
        "serve_args",
        nargs=argparse.REMAINDER,
        help="after --: more `abstractcore serve` flags for every instance",
    )
    up.set_defaults(handler=_cmd_up)

    status = sub.add_parser("status", help="each upstream's health, active and queued requests")
    common(status)
    status.set_defaults(handler=_cmd_status)

    down = sub.add_parser("down", help="stop the cluster started by `cluster up`")
    common(down)
    down.set_defaults(handler=_cmd_down)
