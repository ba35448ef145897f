"""Servers for the server tests: `abstractcore serve` subprocesses on the embedded model, and an
in-thread uvicorn over a scripted provider for the protocol-mapping tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from abstractcore import errors
from abstractcore.providers.base import BaseProvider, Features
from abstractcore.request import GenerationRequest
from abstractcore.types import StreamChunk, TokenLogprob, ToolCall, ToolCallDelta, TopLogprob, Usage

API_KEY = "test-key-123"
STARTUP_DEADLINE_S = 60.0


def wait_until(
    predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class ServerProcess:
    """`python -m abstractcore serve ...` on a free loopback port."""

    def __init__(self, args: list[str], log_dir: Path) -> None:
        self.args = args
        self.log_path = log_dir / f"serve-{os.getpid()}-{id(self)}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    def start(self) -> ServerProcess:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "abstractcore", "serve", "--port", "0", *self.args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()  # the server prints its address first
        if "listening on " not in line:
            self.stop()
            raise AssertionError(f"server did not start: {line!r}\n{self.log()}")
        self.base_url = line.strip().rsplit(" ", 1)[-1]
        wait_until(self._ready, timeout=STARTUP_DEADLINE_S, what=f"{self.base_url}/health")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}\n{self.log()}")
        try:
            return httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.base_url}/health", timeout=5).json()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def terminate(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, wait, return the exit status (kills and fails if it does not exit)."""
        assert self.proc is not None
        self.terminate()
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"server ignored SIGTERM\n{self.log()}") from None
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._log.close()
        return rc


@pytest.fixture(scope="session")
def serve_process(
    tmp_path_factory: pytest.TempPathFactory, embedded_model_dir: Path
) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: start an embedded-model server with extra flags; all are stopped at the end."""
    log_dir = tmp_path_factory.mktemp("serve")
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        server = ServerProcess(["--model", "smollm2-135m", *args], log_dir)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


@pytest.fixture(scope="session")
def mlx_server(serve_process: Callable[..., ServerProcess]) -> Iterator[ServerProcess]:
    """The shared embedded-model server: API key, alias, batch 32; must drain to exit 0."""
    server = serve_process(
        "--api-key",
        API_KEY,
        "--alias",
        "smol",
        "--max-batch-size",
        "32",
        "--max-body-bytes",
        "65536",
        "--log-level",
        "warning",
    )
    yield server
    assert server.stop() == 0, server.log()


# ---------------------------------------------------------------------- scripted provider
class ScriptedProvider(BaseProvider):
    """Deterministic provider for mapping tests; the last message picks the behaviour.

    ``echo <words>`` streams the words; ``gate`` waits until :meth:`release`; ``fail <Error>``
    raises before the first chunk; ``fail-mid <Error>`` raises after one chunk; ``hang``
    waits forever (until cancelled). For tools and structured output: ``say <text>`` streams
    the text verbatim in three pieces, the last one in the finishing chunk; ``call <name>
    <arguments> [| <name> <arguments>...]`` streams tool calls as deltas (indexes 1, 2...;
    the id and name first, the arguments in three fragments, the last one in the finishing
    chunk); ``whole <name> <arguments>`` gives one call only in the finishing chunk. With
    ``logprobs``, each text piece carries one TokenLogprob (and ``top_logprobs``
    alternatives).
    """

    provider_name = "scripted"
    features = Features(tools=True, parallel_tool_calls=True, structured_output=True, logprobs=True)

    def __init__(self, model: str = "scripted-1") -> None:
        super().__init__(model)
        self.requests: list[GenerationRequest] = []
        self.cancelled = 0
        self._gate: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def release(self) -> None:
        """Open the gate of ``gate`` requests (callable from any thread)."""
        assert self._loop is not None and self._gate is not None
        self._loop.call_soon_threadsafe(self._gate.set)

    def _stream(self, request: GenerationRequest) -> Iterator[StreamChunk]:
        raise NotImplementedError

    async def _astream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        self.requests.append(request)
        self._loop = asyncio.get_running_loop()
        if self._gate is None:
            self._gate = asyncio.Event()
        command, _, rest = request.messages[-1].content.partition(" ")
        try:
            if command == "fail":
                raise _error(rest)
            if command == "gate":
                await self._gate.wait()
                rest = "released"
            if command == "hang":
                await asyncio.Event().wait()
            if command in ("say", "call", "whole"):
                for chunk in _scripted_output(command, rest, request):
                    yield chunk
                return
            words = rest.split(" ") if rest else ["ok"]
            limit = request.max_output_tokens or len(words)
            for i, word in enumerate(words[:limit]):
                if command == "fail-mid" and i == 1:
                    raise _error(rest.split(" ")[0])
                yield StreamChunk(content=word if i == 0 else " " + word)
            reason = "length" if len(words) > limit else "stop"
            yield StreamChunk(
                finish_reason=reason,
                usage=Usage(
                    prompt_tokens=7, completion_tokens=min(limit, len(words)), cached_tokens=3
                ),
            )
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def _thirds(text: str) -> list[str]:
    """``text`` in three pieces (some may be empty)."""
    a, b = len(text) // 3, 2 * len(text) // 3
    return [text[:a], text[a:b], text[b:]]


def _logprob(piece: str, i: int, request: GenerationRequest) -> list[TokenLogprob] | None:
    if not request.logprobs:
        return None
    top = [
        TopLogprob(token=f"{piece}~{k}", logprob=-1.0 - k) for k in range(request.top_logprobs or 0)
    ]
    return [
        TokenLogprob(
            token=piece, logprob=-0.25 * (i + 1), bytes=list(piece.encode()), top_logprobs=top
        )
    ]


def _scripted_output(command: str, rest: str, request: GenerationRequest) -> list[StreamChunk]:
    usage = Usage(prompt_tokens=7, completion_tokens=3, cached_tokens=3)
    if command == "say":
        pieces = _thirds(rest)
        chunks = [
            StreamChunk(content=p, logprobs=_logprob(p, i, request))
            for i, p in enumerate(pieces[:2])
        ]
        return [*chunks, StreamChunk(content=pieces[2], logprobs=_logprob(pieces[2], 2, request),
                                     finish_reason="stop", usage=usage)]  # fmt: skip
    if command == "whole":
        name, _, args = rest.partition(" ")
        call = ToolCall.model_validate({"id": "call_whole", "name": name, "arguments": args})
        return [StreamChunk(finish_reason="tool_calls", usage=usage, tool_calls=[call])]
    chunks: list[StreamChunk] = []
    last: list[ToolCallDelta] = []
    for i, spec in enumerate(rest.split(" | ")):
        name, _, args = spec.partition(" ")
        index = i + 1  # not 0-based, as some backends number content blocks
        first, second, third = _thirds(args)
        chunks.append(
            StreamChunk(tool_call_deltas=[ToolCallDelta(index=index, id=f"call_{i}", name=name)])
        )
        chunks.append(StreamChunk(tool_call_deltas=[ToolCallDelta(index=index, arguments=first)]))
        chunks.append(StreamChunk(tool_call_deltas=[ToolCallDelta(index=index, arguments=second)]))
        last.append(ToolCallDelta(index=index, arguments=third))
    return [*chunks, StreamChunk(finish_reason="tool_calls", usage=usage, tool_call_deltas=last)]


def _error(name: str) -> BaseException:
    if name == "RateLimitError":
        return errors.RateLimitError("slow down", retry_after=7)
    if name == "OverloadedError":
        return errors.OverloadedError("queue full", retry_after=2.5)
    if name == "ContextLengthError":
        return errors.ContextLengthError("prompt too long", field="messages")
    if name == "ProviderAPIError":
        return errors.ProviderAPIError("upstream exploded: secret-upstream-detail", status_code=500)
    return RuntimeError("secret-internal-detail at /home/user/app.py")


class ThreadServer:
    """uvicorn serving ``app`` in a thread on a free loopback port (stopped by :meth:`stop`)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=0, lifespan="on", log_config=None, access_log=False
            )
        )
        self.thread = threading.Thread(target=self.server.run, name="test-uvicorn", daemon=True)
        self.base_url = ""

    def start(self) -> ThreadServer:
        self.thread.start()
        wait_until(
            lambda: self.server.started or not self.thread.is_alive(),
            timeout=10,
            what="uvicorn startup",
        )
        assert self.server.started, "uvicorn failed to start"
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.base_url, timeout=10)
        return self

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)
        assert not self.thread.is_alive(), "uvicorn thread did not stop"


@pytest.fixture(scope="module")
def scripted_module() -> ScriptedProvider:
    return ScriptedProvider()


@pytest.fixture
def scripted(scripted_module: ScriptedProvider) -> ScriptedProvider:
    """The module's scripted provider, with its request log cleared for this test."""
    scripted_module.requests.clear()
    scripted_module.cancelled = 0
    return scripted_module


@pytest.fixture(scope="module")
def scripted_server(scripted_module: ScriptedProvider) -> Iterator[ThreadServer]:
    """An in-thread server over the scripted provider (fast keep-alive, small body limit)."""
    from abstractcore.server import create_app

    app = create_app(
        scripted_module,
        api_key=API_KEY,
        model_aliases=["alias-1"],
        max_output_tokens_cap=5,
        max_body_bytes=4096,
        keepalive_interval=0.05,
    )
    server = ThreadServer(app).start()
    yield server
    server.stop()
