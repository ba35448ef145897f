"""Programmable behaviour, chosen per request by the model name: ``"<scenario>~<unique id>"``.

The unique id keeps each test's attempt counter separate while the server is shared by the
whole session. Attempt numbers start at 1. Per-model :class:`~.model.Knobs` (where streamed
text is cut, ...) are set with :meth:`FakeAPI.configure`. A request the real API would refuse
(a tool result without its call, a strict schema that is not strict...) gets its 400.
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections import defaultdict
from typing import Any

from .common import BadRequest
from .core import Connection, Request
from .dialects import DIALECTS, Dialect, Reply
from .model import Knobs, think

# scenario -> (status, kind, extra headers) for plain error replies on every attempt
_ERRORS: dict[str, tuple[int, str, dict[str, str]]] = {
    "401": (401, "auth", {}),
    "403": (403, "permission", {}),
    "404": (404, "not_found", {}),
    "400": (400, "bad_request", {}),
    "context": (400, "context", {}),
    "429": (429, "rate_limit", {"retry-after": "1"}),
    "429-long": (429, "rate_limit", {"retry-after": "3600"}),
    "500": (500, "server", {}),
}

# scenario -> the error sent on the first attempt only; later attempts answer normally
_FIRST_ERRORS: dict[str, tuple[int, str, dict[str, str]]] = {
    "429-then-ok": (429, "rate_limit", {"retry-after": "3"}),
    "429-ms-then-ok": (429, "rate_limit", {"retry-after-ms": "1500", "retry-after": "2"}),
    "500-then-ok": (500, "server", {}),
}


class Recorder:
    """Every request received, by model name (thread-safe: the server runs on its own thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_model: dict[str, list[Request]] = defaultdict(list)

    def add(self, model: str, request: Request) -> int:
        with self._lock:
            self._by_model[model].append(request)
            return len(self._by_model[model])

    def requests(self, model: str) -> list[Request]:
        with self._lock:
            return list(self._by_model.get(model, []))

    def attempts(self, model: str) -> int:
        return len(self.requests(model))


class FakeAPI:
    """The request handler: routes by path to a dialect, then plays the model's scenario."""

    def __init__(self) -> None:
        self.recorder = Recorder()
        self._knobs: dict[str, Knobs] = {}

    def configure(self, model: str, **knobs: Any) -> None:
        """Set ``model``'s :class:`~.model.Knobs` (before its requests)."""
        self._knobs[model] = Knobs(**knobs)

    async def __call__(self, request: Request, conn: Connection) -> None:
        dialect = next((d for d in DIALECTS.values() if request.path == d.path), None)
        body = request.json
        if dialect is None or request.method != "POST" or not isinstance(body, dict):
            await conn.send(404, b"Not Found", "text/plain")
            return
        model = str(body.get("model", ""))
        attempt = self.recorder.add(model, request)
        scenario = model.partition("~")[0]
        knobs = self._knobs.get(model, Knobs())
        await self._play(scenario, attempt, knobs, dialect, body, conn)

    async def _play(
        self,
        scenario: str,
        attempt: int,
        knobs: Knobs,
        d: Dialect,
        body: dict[str, Any],
        conn: Connection,
    ) -> None:
        stream = d.is_stream(body)
        if scenario in _ERRORS or (scenario in _FIRST_ERRORS and attempt == 1):
            status, kind, headers = _ERRORS.get(scenario) or _FIRST_ERRORS[scenario]
            await conn.send_json(status, d.error(kind, f"{kind} ({scenario})"), headers)
            return
        if scenario == "429-date-then-ok" and attempt == 1:
            when = email.utils.formatdate(time.time() + 30, usegmt=True)
            await conn.send_json(429, d.error("rate_limit", "slow down"), {"retry-after": when})
            return
        if scenario == "overloaded":
            await conn.send_json(d.overloaded_status, d.error("overloaded", "overloaded"))
            return
        if scenario == "html-502":
            await conn.send(502, b"<html><body>Bad Gateway</body></html>", "text/html")
            return
        if scenario == "drop" or (scenario == "drop-then-ok" and attempt == 1):
            conn.abort()
            return
        if scenario == "slow":
            await conn.hang()
            return
        try:
            ask = d.ask(body)
            reply = think(ask, scenario, attempt, knobs, cached=3 if scenario == "cached" else 0)
        except BadRequest as exc:
            await conn.send_json(400, d.bad_request(exc))
            return
        if stream:
            await self._stream(scenario, attempt, d, body, reply, conn)
        else:
            await self._full(scenario, d, reply, conn)

    async def _full(self, scenario: str, d: Dialect, reply: Reply, conn: Connection) -> None:
        if scenario == "malformed":
            await conn.send(200, b'{"choices": [{"message": ', "application/json")
        elif scenario == "wrong-shape":
            await conn.send_json(200, {"id": "x", "object": "nothing useful"})
        elif scenario == "drop-mid-body":
            await conn.send_truncated(200, _json_bytes(d.full(reply)), "application/json")
        elif scenario == "slow-mid":
            await conn.send_partial(200, _json_bytes(d.full(reply)), "application/json")
            await conn.hang()
        elif scenario == "no-usage":  # a server that reports no usage at all
            await conn.send_json(200, {k: v for k, v in d.full(reply).items() if k != "usage"})
        else:
            await conn.send_json(200, d.full(reply))

    async def _stream(
        self,
        scenario: str,
        attempt: int,
        d: Dialect,
        body: dict[str, Any],
        reply: Reply,
        conn: Connection,
    ) -> None:
        frames = d.frames(reply, body)
        await conn.start_chunked(200, d.stream_type)
        if scenario == "stream-error-then-ok" and attempt == 1:
            await conn.chunk(d.error_frame("overloaded", "overloaded, try again"))
            await conn.end_chunked()
            return
        for i, frame in enumerate(frames):
            if i == d.first_content_frame + 1:  # just after the first content frame
                if scenario == "drop-mid-body":
                    conn.abort()
                    return
                if scenario == "slow-mid":
                    await conn.hang()
                    return
                if scenario == "stream-error-mid":
                    await conn.chunk(d.error_frame("server", "the model crashed"))
                    await conn.end_chunked()
                    return
                if scenario == "malformed":
                    await conn.chunk(d.garbage_frame())
                elif scenario == "wrong-shape":
                    await conn.chunk(d.wrong_shape_frame())
            if scenario == "no-terminal" and i == len(frames) - 1:
                break
            if scenario == "no-usage" and _usage_only(frame):
                continue  # llama-cpp-python's server streams no usage, asked or not
            await conn.chunk(frame)
        await conn.end_chunked()


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _usage_only(frame: bytes) -> bool:
    """An OpenAI stream frame that carries only usage (``choices: []``)."""
    if not frame.startswith(b"data: {"):
        return False
    payload = json.loads(frame[len(b"data: ") :])
    return "usage" in payload and payload.get("choices") == []
