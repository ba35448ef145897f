"""mlx-lm's own HTTP server as a child process on loopback (a comparison baseline)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from ..errors import ProviderUnavailableError
from .threads import MLXThreads

__all__ = ["MLXLMServer", "free_port"]

# Same BLAS as our engine (docs/architecture.md, "The machine under it"), then mlx-lm's own
# CLI entry point. On Linux the child first asks the kernel for SIGTERM when its parent dies
# (PR_SET_PDEATHSIG = 1), so a benchmark killed with SIGKILL, which runs no cleanup, does not
# leave the server running; the parent-pid check closes the race where the parent died
# before the prctl call.
_BOOT = (
    "import os, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    import ctypes, signal\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)\n"
    "    if os.getppid() != int(os.environ['ABSTRACTCORE_BENCH_PARENT']):\n"
    "        sys.exit(1)\n"
    "from abstractcore.providers.mlx.blas import preload_blas; preload_blas()\n"
    "from mlx_lm.server import main; main()\n"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MLXLMServer:
    """Starts ``mlx_lm server`` with the same model, waits until it answers, always stops it."""

    def __init__(self, model: str, max_concurrency: int, start_timeout_s: float) -> None:
        self.model = model
        self.max_concurrency = max_concurrency
        self.start_timeout_s = start_timeout_s
        self.proc: asyncio.subprocess.Process | None = None
        self._log_path: Path | None = None

    async def start(self) -> str:
        """Launch the server and return its ``/v1`` base URL once it serves requests."""
        from ..providers.mlx.loading import resolve_model_path

        # Resolving may convert a GGUF with MLX: on a thread that is reaped before exit.
        threads = MLXThreads("bench-resolve", 1)
        try:
            model_dir = await threads.run(resolve_model_path, self.model)
        finally:
            await threads.shutdown()
        port = free_port()
        fd, log_name = tempfile.mkstemp(prefix="mlx_lm_server_", suffix=".log")
        self._log_path = Path(log_name)
        cmd = [
            sys.executable, "-c", _BOOT,
            "--model", str(model_dir),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--log-level", "WARNING",
            "--decode-concurrency", str(max(32, self.max_concurrency)),
        ]  # fmt: skip
        with os.fdopen(fd, "wb") as log:
            # Own session: a terminal Ctrl-C reaches us, and we stop the child in order.
            self.proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "ABSTRACTCORE_BENCH_PARENT": str(os.getpid())},
            )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        await self._wait_ready(base)
        return base + "/v1"

    async def _wait_ready(self, base: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                assert self.proc is not None
                if self.proc.returncode is not None:
                    code = self.proc.returncode
                    raise ProviderUnavailableError(
                        f"mlx-lm server exited with code {code}: {self._log_tail()}",
                        provider="mlx-lm-server",
                    )
                try:
                    if (await client.get(base + "/v1/models")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    waited = f"{self.start_timeout_s:.0f} s"
                    raise ProviderUnavailableError(
                        f"mlx-lm server not ready after {waited}: {self._log_tail()}",
                        provider="mlx-lm-server",
                    )
                await asyncio.sleep(0.25)

    def _log_tail(self, lines: int = 3) -> str:
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
