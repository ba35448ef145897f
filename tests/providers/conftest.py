"""Fixtures for the HTTP provider tests: fake API servers on loopback and provider factories."""

from __future__ import annotations

import gc
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from servers import FakeAPI, LoopbackServer, Request

from abstractcore.providers import _http
from abstractcore.providers._http_provider import HTTPProvider
from abstractcore.providers.anthropic import AnthropicProvider
from abstractcore.providers.ollama import OllamaProvider
from abstractcore.providers.openai import (
    LMStudioProvider,
    OpenAICompatibleProvider,
    OpenAIProvider,
)

_CLASSES: dict[str, type[HTTPProvider]] = {
    "openai": OpenAIProvider,
    "openai-compatible": OpenAICompatibleProvider,
    "lmstudio": LMStudioProvider,
    "anthropic": AnthropicProvider,
    "ollama": OllamaProvider,
}
_PREFIX = {"anthropic": "/anthropic", "ollama": "/ollama"}


@dataclass
class Fake:
    """The running fake APIs."""

    server: LoopbackServer
    api: FakeAPI

    def base_url(self, kind: str) -> str:
        """The base_url a provider of ``kind`` is given (OpenAI's ends in /v1)."""
        return self.server.url + _PREFIX.get(kind, "/openai/v1")

    def attempts(self, model: str) -> int:
        """How many requests the server got for ``model``."""
        return self.api.recorder.attempts(model)

    def requests(self, model: str) -> list[Request]:
        """The requests the server got for ``model``."""
        return self.api.recorder.requests(model)

    def configure(self, model: str, **knobs: Any) -> None:
        """Set the fake model's knobs for ``model`` (see ``servers.model.Knobs``)."""
        self.api.configure(model, **knobs)

    def open_client_sockets(self) -> list[socket.socket]:
        """Sockets in this process still connected to the fake server."""
        out = []
        for obj in gc.get_objects():
            if isinstance(obj, socket.socket) and obj.fileno() != -1:
                try:
                    peer = obj.getpeername()
                except OSError:
                    continue
                if (
                    isinstance(peer, tuple)
                    and peer[1] == self.server.port
                    and obj.getsockname()[1] != self.server.port
                ):
                    out.append(obj)
        return out


@pytest.fixture(scope="session")
def fake() -> Iterator[Fake]:
    """One server for the session (session fixtures start before a test's no_thread_leak)."""
    api = FakeAPI()
    server = LoopbackServer(api)
    server.start()
    yield Fake(server, api)
    server.stop()


@pytest.fixture
def backoff(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record every retry wait instead of sleeping (sync and async)."""
    waits: list[float] = []

    def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    async def fake_asleep(seconds: float) -> None:
        waits.append(seconds)
        await anyio.lowlevel.checkpoint()

    monkeypatch.setattr(_http, "sleep", fake_sleep)
    monkeypatch.setattr(_http, "asleep", fake_asleep)
    return waits


MakeLLM = Callable[..., HTTPProvider]


@pytest.fixture
def make_llm(fake: Fake, backoff: list[float]) -> Iterator[MakeLLM]:
    """``make_llm(kind, scenario="ok", **options)``: a provider whose model selects the scenario.

    Each call gets a unique model name, so the server's attempt count is per test. Retry
    waits are recorded in ``backoff`` instead of slept.
    """
    created: list[HTTPProvider] = []

    def make(kind: str, scenario: str = "ok", **options: Any) -> HTTPProvider:
        if kind in ("openai", "anthropic"):
            options.setdefault("api_key", "test-key")
        options.setdefault("base_url", fake.base_url(kind))
        llm = _CLASSES[kind](f"{scenario}~{uuid.uuid4().hex[:10]}", **options)
        created.append(llm)
        return llm

    yield make
    for llm in created:
        llm.close()
