"""Starting, watching and stopping a cluster: N ``abstractcore serve`` processes and nginx.

:class:`Cluster` owns every process it starts. :meth:`Cluster.start` launches the instances
(each on a free loopback port, its output in ``instance-<i>.log`` in the run directory),
waits for each ``/health`` to answer 200, writes ``nginx.conf`` and starts nginx in the
foreground (``daemon off``, so it is our child), then records the whole cluster in
``cluster.json`` for ``cluster status`` and ``cluster down``. :meth:`Cluster.stop` stops
nginx first (no new requests reach a stopping instance), then sends each instance SIGTERM (it
drains: docs/server.md), and kills what is still alive after the grace period. The processes
run in their own sessions, so a terminal's Ctrl-C reaches only ``cluster up``, which then
stops them in that order.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ..errors import ConfigurationError
from .nginx_conf import render_nginx_conf

__all__ = [
    "Cluster",
    "ClusterRecord",
    "NginxNotFoundError",
    "find_nginx",
    "health_of",
    "read_record",
]

RECORD_NAME = "cluster.json"
_NGINX_HINT = (
    "nginx is needed in front of the instances and was not found on PATH (or $NGINX). "
    "Install it: `apt-get install nginx` (Debian/Ubuntu), `brew install nginx` (macOS)."
)


class NginxNotFoundError(ConfigurationError):
    """No nginx binary: the message says how to install one."""

    def __init__(self) -> None:
        super().__init__(_NGINX_HINT, setting="nginx")


def find_nginx() -> str:
    """The nginx binary: ``$NGINX``, else ``nginx`` on PATH (or in /usr/sbin)."""
    explicit = os.environ.get("NGINX")
    if explicit:
        if Path(explicit).is_file():
            return explicit
        raise NginxNotFoundError()
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise NginxNotFoundError()
    return found


@dataclass
class ClusterRecord:
    """What ``cluster.json`` holds: enough for ``status`` and ``down`` in another process."""

    url: str
    policy: str
    upstreams: list[str]
    owner_pid: int
    nginx_pid: int | None = None
    instance_pids: list[int] = field(default_factory=list)
    run_dir: str = ""


def read_record(run_dir: Path) -> ClusterRecord:
    """The record of the cluster in ``run_dir`` (ConfigurationError when there is none)."""
    path = run_dir / RECORD_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"no cluster is recorded in {run_dir} ({exc})", setting="run_dir"
        ) from None
    return ClusterRecord(**data)


def health_of(upstream: str, timeout: float = 2.0) -> dict[str, Any]:
    """One upstream's ``/health`` body (``status: "down"`` when it does not answer)."""
    try:
        r = httpx.get(f"http://{upstream}/health", timeout=timeout)
        body = r.json()
        return body if isinstance(body, dict) else {"status": f"HTTP {r.status_code}"}
    except (httpx.HTTPError, ValueError) as exc:
        return {"status": "down", "error": type(exc).__name__}


class Cluster:
    """N local instances (or given upstreams) behind one nginx, owned by this object."""

    def __init__(
        self,
        run_dir: Path,
        *,
        instances: int = 0,
        upstreams: Sequence[str] = (),
        serve_args: Sequence[str] = (),
        host: str = "127.0.0.1",
        port: int = 8080,
        policy: str = "affinity",
        start_timeout_s: float = 300.0,
        grace_period_s: float = 30.0,
    ) -> None:
        if instances < 0 or (instances == 0 and not upstreams):
            raise ConfigurationError(
                "give --instances N (local instances) or --upstream HOST:PORT", setting="instances"
            )
        self.run_dir = run_dir
        self.instances = instances
        self.remote = list(upstreams)
        self.serve_args = list(serve_args)
        self.host, self.port, self.policy = host, port, policy
        self.start_timeout_s = start_timeout_s
        self.grace_period_s = grace_period_s
        self.nginx_bin = find_nginx()  # before anything starts
        self.children: list[subprocess.Popen[bytes]] = []
        self.nginx: subprocess.Popen[bytes] | None = None
        self.upstreams: list[str] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ start
    def start(self) -> ClusterRecord:
        """Start everything; on any failure, stop what was started and raise."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.run_dir / "temp" / kind).mkdir(parents=True, exist_ok=True)
        try:
            local = [self._start_instance(i) for i in range(self.instances)]
            self.upstreams = [
                *(self._wait_listening(p, i) for i, p in enumerate(local)),
                *self.remote,
            ]
            deadline = time.monotonic() + self.start_timeout_s
            for upstream in self.upstreams[: len(local)]:
                self._wait_ready(upstream, deadline)
            self._start_nginx()
        except BaseException:
            self.stop()
            raise
        record = self.record()
        (self.run_dir / RECORD_NAME).write_text(json.dumps(asdict(record), indent=2) + "\n")
        return record

    def record(self) -> ClusterRecord:
        return ClusterRecord(
            url=self.url,
            policy=self.policy,
            upstreams=self.upstreams,
            owner_pid=os.getpid(),
            nginx_pid=None if self.nginx is None else self.nginx.pid,
            instance_pids=[c.pid for c in self.children],
            run_dir=str(self.run_dir),
        )

    def _start_instance(self, index: int) -> subprocess.Popen[bytes]:
        log = (self.run_dir / f"instance-{index}.log").open("wb")
        cmd = [
            sys.executable, "-m", "abstractcore", "serve", "--host", "127.0.0.1", "--port", "0",
            "--grace-period", str(self.grace_period_s), *self.serve_args,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.children.append(proc)
        return proc

    def _wait_listening(self, proc: subprocess.Popen[bytes], index: int) -> str:
        """The instance's ``host:port``, read from the line ``serve`` prints once bound."""
        from ..server.lifecycle import LISTENING_PREFIX  # (uvicorn: only when starting)

        log = self.run_dir / f"instance-{index}.log"
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline:
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith(LISTENING_PREFIX):
                    return line[len(LISTENING_PREFIX) :].strip().removeprefix("http://")
            if proc.poll() is not None:
                raise ConfigurationError(
                    f"instance {index} exited with status {proc.returncode}: {_tail(log)}",
                    setting="serve_args",
                )
            time.sleep(0.05)
        raise ConfigurationError(
            f"instance {index} did not bind a port in 60 s", setting="instances"
        )

    def _wait_ready(self, upstream: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            body = health_of(upstream, timeout=1.0)
            if body.get("ready") is True:
                return
            if body.get("status") == "error":
                raise ConfigurationError(
                    f"the instance at {upstream} failed to load its model (see its log in "
                    f"{self.run_dir})",
                    setting="model",
                )
            time.sleep(0.2)
        raise ConfigurationError(
            f"the instance at {upstream} was not ready after {self.start_timeout_s:.0f} s",
            setting="start_timeout_s",
        )

    def _start_nginx(self) -> None:
        conf = self.run_dir / "nginx.conf"
        conf.write_text(
            render_nginx_conf(
                self.upstreams,
                listen=f"{self.host}:{self.port}",
                policy=self.policy,
                run_dir=self.run_dir,
            )
        )
        log = (self.run_dir / "nginx-stderr.log").open("wb")
        cmd = [self.nginx_bin, "-p", str(self.run_dir.resolve()), "-c", str(conf.resolve()),
               "-g", "daemon off;"]  # fmt: skip
        with log:
            self.nginx = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self.nginx.poll() is not None:
                raise ConfigurationError(
                    f"nginx exited with status {self.nginx.returncode}: "
                    f"{_tail(self.run_dir / 'nginx-stderr.log')}",
                    setting="port",
                )
            try:
                httpx.get(f"{self.url}/health", timeout=1.0)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise ConfigurationError(f"nginx did not listen on {self.url} in 10 s", setting="port")

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        """nginx first, then the instances (SIGTERM, SIGKILL after the grace period)."""
        if self.nginx is not None:
            _terminate([self.nginx], signal.SIGQUIT, 5.0)
            self.nginx = None
        _terminate(self.children, signal.SIGTERM, self.grace_period_s + 5.0)
        self.children = []
        with contextlib.suppress(OSError):
            (self.run_dir / RECORD_NAME).unlink()

    def kill(self) -> None:
        """Last resort (a second Ctrl-C): SIGKILL everything now, no draining."""
        for p in [*([self.nginx] if self.nginx is not None else []), *self.children]:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.nginx, self.children = None, []

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _terminate(procs: Sequence[subprocess.Popen[bytes]], sig: int, grace_s: float) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])
