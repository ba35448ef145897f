"""Project-wide test switches: no real network, an anyio backend, an event-loop blocking guard."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_local(address: Any) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths and the like
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: Any) -> None:
    if not _is_local(address):
        raise RuntimeError(f"tests may not reach the network: connect to {address!r} blocked")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    if not _is_local(address):
        raise RuntimeError(f"tests may not reach the network: connect to {address!r} blocked")
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True, scope="session")
def _block_network() -> Iterator[None]:
    """Only loopback is reachable from tests (pydantic-ai's ALLOW_MODEL_REQUESTS idea)."""
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    yield
    socket.socket.connect = _real_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _real_connect_ex  # type: ignore[method-assign]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def no_blocking_loop() -> Iterator[None]:
    """Fail the test if anything blocks the running event loop (time.sleep, sync socket I/O...)."""
    from blockbuster import blockbuster_ctx

    with blockbuster_ctx(["abstractcore"]) as bb:
        yield bb


@pytest.fixture
def no_thread_leak() -> Iterator[None]:
    """Fail the test if it leaves a thread running that was not there before."""
    before = set(threading.enumerate())
    yield
    leftover = [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith("asyncio_")
    ]
    for t in leftover:
        t.join(timeout=5)
    leftover = [t for t in leftover if t.is_alive()]
    assert not leftover, f"threads outlived their owner: {[t.name for t in leftover]}"


def pytest_configure(config: pytest.Config) -> None:
    # MLX binds its BLAS at its first import: load OpenBLAS before any test module imports mlx.
    # Without one, say so once and run slowly rather than fail every test (warnings are errors).
    import warnings

    from abstractcore.providers.mlx.blas import preload_blas

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        preload_blas()


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The converted embedded model (smollm2-135m) directory; converted once per machine,
    then cached."""
    from abstractcore.providers.mlx.loading import resolve_model_path

    return resolve_model_path("smollm2-135m")


@pytest.fixture(scope="session")
def embedded_gguf() -> Path:
    """The embedded model's original Q4_1 GGUF file (kept in the cache after the first pull)."""
    from abstractcore.providers.mlx.loading import fetch_alias_gguf

    return fetch_alias_gguf("smollm2-135m")
