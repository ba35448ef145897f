"""The engine's malloc_trim cadence (a fake trim counts the calls; the real one is glibc's)."""

from __future__ import annotations

import platform
import sys
from typing import Any

import pytest

from abstractcore.providers.mlx.malloc_trim import TRIM_ENV, Trimmer


def _counting(trimmer: Trimmer) -> list[int]:
    calls: list[int] = []
    trimmer._trim = lambda pad: calls.append(pad)  # type: ignore[assignment]
    return calls


def test_trims_at_most_once_per_interval_and_once_when_idle() -> None:
    trimmer = Trimmer(interval_s=1.0)
    calls = _counting(trimmer)
    start = trimmer._last
    trimmer.after_step(start + 0.5)
    assert calls == []  # inside the interval
    trimmer.after_step(start + 1.1)
    trimmer.after_step(start + 1.5)
    assert calls == [0]  # once for the interval
    trimmer.idle()
    assert calls == [0, 0] and trimmer.trims == 2  # the idle trim returns what the steps freed
    assert trimmer.seconds > 0
    trimmer.idle()
    assert trimmer.trims == 2  # nothing ran since: no trim


def test_zero_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRIM_ENV, "0")
    trimmer = Trimmer()
    assert not trimmer.enabled
    trimmer.after_step(10**6)
    trimmer.idle()
    assert trimmer.trims == 0


@pytest.mark.mlx
@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="malloc_trim is glibc's",
)
def test_the_engine_trims_when_it_goes_idle(mlx_llm: Any) -> None:
    before = mlx_llm.stats()
    mlx_llm.generate("Say hello.", max_output_tokens=4)
    mlx_llm.generate("Say hello again.", max_output_tokens=4)
    after = mlx_llm.stats()
    assert after["malloc_trims"] > before["malloc_trims"]  # idle between the two calls
    assert after["malloc_trim_s"] > before["malloc_trim_s"]  # and the time the trims took
