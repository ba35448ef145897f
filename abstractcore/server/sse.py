"""Server-sent events: framing, and a response that stops generating when the client leaves."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

__all__ = ["EventStreamResponse", "sse_comment", "sse_data", "sse_event", "wait_for_disconnect"]

_HEADERS = {
    "cache-control": "no-cache",
    # nginx buffers proxied responses by default; SSE must reach the client as it is made.
    "x-accel-buffering": "no",
}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def sse_data(obj: Any) -> bytes:
    """One ``data:`` event (OpenAI style); ``obj`` is JSON-encoded unless it is a str."""
    payload = obj if isinstance(obj, str) else _dumps(obj)
    return f"data: {payload}\n\n".encode()


def sse_event(name: str, obj: Any) -> bytes:
    """One named event (Anthropic style): ``event: name`` then its JSON ``data:``."""
    return f"event: {name}\ndata: {_dumps(obj)}\n\n".encode()


def sse_comment(text: str) -> bytes:
    """A comment line; clients ignore it, proxies see traffic (keep-alive)."""
    return f": {text}\n\n".encode()


async def wait_for_disconnect(receive: Receive) -> None:
    """Return once the client has closed the connection (the body must already be read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class EventStreamResponse(Response):
    """An ASGI ``text/event-stream`` response over an async iterator of encoded events.

    A concurrent watcher cancels the iteration as soon as the client disconnects, and the
    iterator is always closed (``aclose``), then ``on_close`` runs, so that the generation
    behind it is cancelled immediately, not whenever the garbage collector finalises it.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[bytes],
        *,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.events = events
        self.on_close = on_close
        self.status_code = status_code
        self.background = None
        self.init_headers({**_HEADERS, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender = asyncio.create_task(self._send_all(send))
        watcher = asyncio.create_task(wait_for_disconnect(receive))
        try:
            await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, watcher):
                task.cancel()
            await asyncio.gather(sender, watcher, return_exceptions=True)
            try:
                aclose = getattr(self.events, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                if self.on_close is not None:
                    await self.on_close()
        if sender.done() and not sender.cancelled() and sender.exception() is not None:
            raise sender.exception()  # type: ignore[misc]

    async def _send_all(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for chunk in self.events:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
