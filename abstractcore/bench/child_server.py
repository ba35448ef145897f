"""A comparison server as a child process on loopback: started, waited for, always stopped.

mlx-lm's server (mlx_lm_server.py) and llama.cpp's (llama_server.py) differ only in the
command line and the URL that says they are ready; the process handling is here, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from ..errors import ProviderUnavailableError

__all__ = ["ChildServer", "free_port", "python_command"]

# On Linux the child first asks the kernel for SIGTERM when its parent dies
# (PR_SET_PDEATHSIG = 1), so a benchmark killed with SIGKILL, which runs no cleanup, does not
# leave the server running; the parent-pid check closes the race where the parent died
# before the prctl call. The setting survives ``execv``, so a native server binary started
# through this guard (``exec_command``) is covered as well.
_GUARD = (
    "import os, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    import ctypes, signal\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)\n"
    "    if os.getppid() != int(os.environ['ABSTRACTCORE_BENCH_PARENT']):\n"
    "        sys.exit(1)\n"
)
_EXEC = _GUARD + "os.execv(sys.argv[1], sys.argv[1:])\n"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def python_command(code: str, args: Sequence[str]) -> list[str]:
    """This interpreter running ``code`` (after the parent-death guard) with ``args``."""
    return [sys.executable, "-c", _GUARD + code, *args]


def exec_command(binary: str, args: Sequence[str]) -> list[str]:
    """``binary args`` started behind the parent-death guard."""
    return [sys.executable, "-c", _EXEC, binary, *args]


class ChildServer:
    """One server process: :meth:`launch` it, wait until ``ready_path`` answers 200, stop it
    (SIGTERM, then SIGKILL after 10 s). Its output goes to a temporary log whose last lines
    explain a failed start."""

    def __init__(self, label: str, start_timeout_s: float) -> None:
        self.label = label
        self.start_timeout_s = start_timeout_s
        self.proc: asyncio.subprocess.Process | None = None
        self._log_path: Path | None = None

    async def launch(self, command: Sequence[str], base: str, ready_path: str) -> None:
        """Run ``command`` and return once ``base + ready_path`` answers 200."""
        fd, log_name = tempfile.mkstemp(prefix=f"{self.label}_", suffix=".log")
        self._log_path = Path(log_name)
        with os.fdopen(fd, "wb") as log:
            # Own session: a terminal Ctrl-C reaches us, and we stop the child in order.
            self.proc = await asyncio.create_subprocess_exec(
                *command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "ABSTRACTCORE_BENCH_PARENT": str(os.getpid())},
            )  # fmt: skip
        await self._wait_ready(base + ready_path)

    async def _wait_ready(self, url: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                assert self.proc is not None
                if self.proc.returncode is not None:
                    code = self.proc.returncode
                    raise ProviderUnavailableError(
                        f"{self.label} exited with code {code}: {self.log_tail()}",
                        provider=self.label,
                    )
                try:
                    if (await client.get(url)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    waited = f"{self.start_timeout_s:.0f} s"
                    raise ProviderUnavailableError(
                        f"{self.label} not ready after {waited}: {self.log_tail()}",
                        provider=self.label,
                    )
                await asyncio.sleep(0.25)

    def log_tail(self, lines: int = 3) -> str:
        """The last lines the server wrote, on one line."""
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        text = self._log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(empty log)"

    async def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 10 s) and delete its log."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        self._cleanup()

    def kill(self) -> None:
        """Synchronous last resort before the process exits: SIGKILL."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        self._cleanup()

    def _cleanup(self) -> None:
        self.proc = None
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None
