"""Running the app under uvicorn: bind, announce the address, drain on SIGTERM, exit 0."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import threading
from collections.abc import Generator
from typing import Any, TextIO

import uvicorn

__all__ = ["LISTENING_PREFIX", "GracefulServer", "serve"]

# The line printed once the socket is bound; tests and scripts read the port from it.
LISTENING_PREFIX = "abstractcore serve: listening on "

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulServer(uvicorn.Server):
    """uvicorn's server, except that a SIGTERM/SIGINT ends it with exit status 0.

    On the first signal uvicorn stops accepting connections, closes idle keep-alive
    connections and waits up to ``timeout_graceful_shutdown`` for in-flight responses; a
    second SIGINT forces the exit. Stock uvicorn re-raises the signal once it has drained,
    so the process would die *by* the signal; a drain that completed is a clean exit.
    It also stops, with exit status 1, when the app's model fails to load.
    """

    exit_code = 0

    def handle_exit(self, sig: int, frame: Any) -> None:
        """uvicorn's signal handler, after marking the app as draining (/health: 503)."""
        state = getattr(getattr(self.config.app, "state", None), "abstractcore", None)
        if state is not None:
            state.draining = True
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's periodic check (every 0.1 s), plus: stop if the model failed to load."""
        state = getattr(getattr(self.config.app, "state", None), "abstractcore", None)
        if state is not None and state.load_error is not None:
            self.exit_code = 1
            return True
        return await super().on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Install the drain handlers for the duration of the server (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    grace_period: float = 30.0,
    log_level: str = "info",
    access_log: bool = False,
    announce: TextIO | None = None,
) -> int:
    """Serve ``app`` until SIGTERM/SIGINT; returns the exit status (0 after a clean drain).

    ``port=0`` picks a free port; the bound address is printed to ``announce`` (stdout by
    default) as ``abstractcore serve: listening on http://HOST:PORT``.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=math.ceil(grace_period),
        lifespan="on",
    )
    server = GracefulServer(config)
    sock = config.bind_socket()
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    out = announce if announce is not None else sys.stdout
    print(f"{LISTENING_PREFIX}http://{shown}:{bound_port}", file=out, flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        logging.getLogger("abstractcore.server").error("the server failed to start")
        return 1
    return server.exit_code
