"""A tiny HTTP/1.1 server on 127.0.0.1, run on its own thread, with byte-level control.

Written on asyncio streams rather than an ASGI server because the tests need faults that a
framework hides: closing the socket before a reply, mid-body or mid-stream, and hanging.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    529: "Overloaded",
}


@dataclass
class Request:
    """One received request."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any = field(default=None)


class Connection:
    """The response side of one request, with fault injection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.reusable = True

    def _head(self, status: int, headers: dict[str, str]) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        """A complete response with Content-Length."""
        hdrs = {"content-type": content_type, "content-length": str(len(body)), **(headers or {})}
        self._writer.write(self._head(status, hdrs) + body)
        await self._writer.drain()

    async def send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        """A complete JSON response."""
        await self.send(status, json.dumps(obj).encode(), "application/json", headers)

    async def send_partial(self, status: int, body: bytes, content_type: str) -> None:
        """Announce the whole body but send only half of it."""
        self.reusable = False
        hdrs = {"content-type": content_type, "content-length": str(len(body))}
        self._writer.write(self._head(status, hdrs) + body[: len(body) // 2])
        await self._writer.drain()

    async def send_truncated(self, status: int, body: bytes, content_type: str) -> None:
        """Announce the whole body, send half of it, then drop the connection."""
        await self.send_partial(status, body, content_type)
        self.abort()

    async def start_chunked(self, status: int, content_type: str) -> None:
        """Begin a streamed (chunked) response."""
        hdrs = {
            "content-type": content_type,
            "transfer-encoding": "chunked",
            "cache-control": "no-cache",
        }
        self._writer.write(self._head(status, hdrs))
        await self._writer.drain()

    async def chunk(self, data: bytes) -> None:
        """Send one chunk of a streamed response."""
        self._writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await self._writer.drain()

    async def end_chunked(self) -> None:
        """Finish a streamed response cleanly."""
        self._writer.write(b"0\r\n\r\n")
        await self._writer.drain()

    def abort(self) -> None:
        """Drop the connection at once (no more bytes, no clean end)."""
        self.reusable = False
        self._writer.transport.abort()

    async def hang(self) -> None:
        """Send nothing more until the client goes away (or the server stops)."""
        self.reusable = False
        while await self._reader.read(65536):
            pass


Handler = Callable[[Request, Connection], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    parsed = None
    if body:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
    return Request(method, path, headers, body, parsed)


class LoopbackServer:
    """Serves ``handler`` on 127.0.0.1 (a free port) from a background thread."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="loopback-server")
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Bind and listen before returning, so no readiness wait is needed."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(256)
        self.port = sock.getsockname()[1]
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._serve(sock), self._loop)
        fut.result(timeout=10)

    async def _serve(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._on_connection, sock=sock, backlog=256)

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                conn = Connection(reader, writer)
                try:
                    await self._handler(request, conn)
                except Exception as exc:  # noqa: BLE001 - a fake's bug must show, not look like a drop
                    msg = f"fake server failed: {type(exc).__name__}: {exc}".encode()
                    await conn.send(599, msg, "text/plain")
                    break
                if not conn.reusable:
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    def stop(self) -> None:
        """Close the listener and every connection, then stop and join the thread."""
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
