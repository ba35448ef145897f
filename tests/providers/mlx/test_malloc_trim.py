"""The engine's malloc_trim policy: at most once per interval, only over the free-memory
budget (fakes count the calls and set the free bytes; the glibc tests use glibc itself)."""

from __future__ import annotations

import platform
import subprocess
import sys
from typing import Any

import pytest

from abstractcore.providers.mlx.malloc_trim import KEEP_ENV, TRIM_ENV, Trimmer

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="malloc_trim, mallopt and mallinfo2 are glibc's",
)


def _faked(trimmer: Trimmer, free: list[int]) -> list[int]:
    """Calls to the trimmer's trim recorded; its free-bytes reading the last of ``free``."""
    calls: list[int] = []
    trimmer._libc = object()  # enabled even off glibc: the fakes below stand in for it
    trimmer._trim = lambda pad: calls.append(pad)  # type: ignore[method-assign]
    trimmer._free = lambda: free[-1]  # type: ignore[method-assign]
    return calls


def test_trims_only_over_the_budget_at_most_once_per_interval() -> None:
    trimmer = Trimmer(interval_s=1.0, keep_bytes=1000)
    free = [5000]
    calls = _faked(trimmer, free)
    start = trimmer._last
    trimmer.after_step(start + 0.5)
    assert calls == [] and trimmer.free_bytes is None  # inside the interval: not even a check
    trimmer.after_step(start + 1.1)
    trimmer.after_step(start + 1.5)
    assert calls == [0] and trimmer.free_bytes == 5000  # once for the interval
    free.append(999)  # under the budget: freed blocks stay for reuse
    trimmer.after_step(start + 2.2)
    assert calls == [0] and trimmer.free_bytes == 999
    free.append(1001)
    trimmer.after_step(start + 2.5)  # inside the interval again: no check
    assert calls == [0]
    trimmer.idle()  # the idle check applies the same budget
    assert calls == [0, 0] and trimmer.trims == 2
    assert trimmer.seconds > 0
    trimmer.idle()
    assert trimmer.trims == 2  # nothing ran since: no check


def test_a_zero_budget_trims_every_interval() -> None:
    trimmer = Trimmer(interval_s=1.0, keep_bytes=0)
    calls = _faked(trimmer, [1])
    trimmer.after_step(trimmer._last + 1.0)
    trimmer.after_step(trimmer._last + 1.0)
    assert calls == [0, 0]
    assert not trimmer.start()  # and glibc's thresholds are left as they are


def test_zero_interval_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRIM_ENV, "0")
    trimmer = Trimmer()
    assert not trimmer.enabled and not trimmer.start()
    trimmer.after_step(10**6)
    trimmer.idle()
    assert trimmer.trims == 0


def test_the_budget_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEEP_ENV, "64")
    assert Trimmer().keep_bytes == 64 << 20
    monkeypatch.setenv(KEEP_ENV, "lots")  # not a number: the default, with a warning
    assert Trimmer().keep_bytes == 2048 << 20
    monkeypatch.setenv(KEEP_ENV, "-1")
    assert Trimmer().keep_bytes == 2048 << 20


_FRESH_HEAP = """
import ctypes
from abstractcore.providers.mlx.malloc_trim import Trimmer, heap_free_bytes, keep_freed_memory

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
assert keep_freed_memory(1 << 30)  # blocks up to 32 MiB from the heap, kept when freed
blocks = [libc.malloc(8 << 20) for _ in range(8)]  # under the 32 MiB mmap threshold
for b in blocks:
    ctypes.memset(b, 1, 8 << 20)  # touched: resident
held = heap_free_bytes()
for b in blocks:
    libc.free(b)
freed = heap_free_bytes()
trimmer = Trimmer(interval_s=1.0, keep_bytes=16 << 20)
trimmer.idle()  # nothing ran: no check
trimmer.after_step(trimmer._last + 1.0)
print(held, freed, trimmer.trims, trimmer.free_bytes)
"""


@glibc
def test_glibc_keeps_freed_heap_memory_and_the_trimmer_sees_it() -> None:
    # In a fresh interpreter: this process's heap holds whatever earlier tests freed, and
    # mallopt's settings are process-wide.
    out = subprocess.run(
        [sys.executable, "-c", _FRESH_HEAP], capture_output=True, text=True, timeout=60,
        check=True,
    ).stdout  # fmt: skip
    held, freed, trims, seen = (int(v) for v in out.split())
    assert freed >= held + (60 << 20)  # the 64 MiB freed are kept in the heap, not unmapped
    assert trims == 1 and seen >= held + (60 << 20)  # the trimmer saw them, over 16 MiB


@pytest.mark.mlx
@glibc
def test_the_engine_checks_when_it_goes_idle(mlx_llm: Any) -> None:
    before = mlx_llm.stats()
    mlx_llm.generate("Say hello.", max_output_tokens=4)
    mlx_llm.generate("Say hello again.", max_output_tokens=4)
    after = mlx_llm.stats()
    assert after["malloc_trim_s"] > before["malloc_trim_s"]  # idle checks between the calls
    assert isinstance(after["malloc_free_bytes"], int)  # and read glibc's free bytes
