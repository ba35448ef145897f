"""The one retry loop (``Attempts``): its sync and async forms agree attempt for attempt.

Each scenario scripts what every attempt does (fail with a given error, or give items then
maybe fail); the four loops must make the same attempts, wait the same number of times, end
the same way, and close every attempt's iterator, so a change to one form that the other does
not get fails here (the sync stream once left its event iterator open while the async one
closed it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass, field
from typing import Any

import pytest

from abstractcore.errors import (
    AuthenticationError,
    OverloadedError,
    ProviderAPIError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitError,
)
from abstractcore.providers._http import RetryPolicy
from abstractcore.providers._retry import Attempts

Step = ProviderError | list[Any] | tuple[list[Any], ProviderError]


@dataclass
class Script:
    """Hands out one scripted step per attempt and records what happened."""

    steps: list[Step]
    attempts: int = 0
    closed: list[bool] = field(default_factory=list)

    def _step(self) -> Step:
        self.attempts += 1
        return self.steps[min(self.attempts, len(self.steps)) - 1]

    def call(self) -> list[Any]:
        step = self._step()
        if isinstance(step, ProviderError):
            raise step
        return step[0] if isinstance(step, tuple) else step

    async def acall(self) -> list[Any]:
        await asyncio.sleep(0)
        return self.call()

    def gen(self) -> Generator[Any, None, None]:
        step = self._step()
        index = len(self.closed)
        self.closed.append(False)
        try:
            if isinstance(step, ProviderError):
                raise step
            items, error = step if isinstance(step, tuple) else (step, None)
            yield from items
            if error is not None:
                raise error
        finally:
            self.closed[index] = True

    async def agen(self) -> AsyncGenerator[Any, None]:
        inner = self.gen()
        try:
            for item in inner:
                await asyncio.sleep(0)
                yield item
        finally:
            inner.close()


SCENARIOS: dict[str, list[Step]] = {
    "ok": [["a", "b"]],
    "429-then-ok": [RateLimitError("slow", retry_after=0.25), ["a", "b"]],
    "connect-then-overloaded-then-ok": [
        ProviderUnavailableError("down"),
        OverloadedError("full"),
        ["a"],
    ],
    "500-forever": [ProviderAPIError("boom", status_code=500)],
    "401": [AuthenticationError("no", status_code=401)],
    "fails-after-a-chunk": [(["a"], ProviderAPIError("cut", status_code=500)), ["a", "b"]],
}


def _outcome(run: Any) -> tuple[Any, str | None]:
    try:
        return run(), None
    except ProviderError as exc:
        return None, type(exc).__name__


async def _aoutcome(run: Any) -> tuple[Any, str | None]:
    try:
        return await run(), None
    except ProviderError as exc:
        return None, type(exc).__name__


def _new() -> Attempts:
    return Attempts(RetryPolicy(max_retries=2), "test")


def _run_form(form: str, steps: list[Step], backoff: list[float]) -> tuple[Any, ...]:
    """(items got, error name, attempts made, waits) for one loop over a fresh script."""
    script = Script(list(steps))
    backoff.clear()
    attempts = _new()
    got: list[Any] = []

    def consume() -> list[Any]:
        got.extend(attempts.stream(script.gen))
        return got

    async def aconsume() -> list[Any]:
        async for item in attempts.astream(script.agen):
            got.append(item)
        return got

    if form == "run":
        value, error = _outcome(lambda: attempts.run(script.call))
    elif form == "arun":
        value, error = asyncio.run(_aoutcome(lambda: attempts.arun(script.acall)))
    elif form == "stream":
        value, error = _outcome(consume)
    else:
        value, error = asyncio.run(_aoutcome(aconsume))
    if form in ("stream", "astream"):
        assert all(script.closed), f"{form} left an attempt's iterator open"
        value = got
    return (list(value or []), error, script.attempts, len(backoff))


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_four_loops_agree(name: str, backoff: list[float]) -> None:
    forms = ("run", "arun", "stream", "astream")
    results = {form: _run_form(form, SCENARIOS[name], backoff) for form in forms}
    assert results["run"] == results["arun"], results
    assert results["stream"] == results["astream"], results
    if name != "fails-after-a-chunk":  # a stream keeps what it yielded; a call has nothing
        assert results["run"] == results["stream"], results
    else:
        assert results["stream"] == (["a"], "ProviderAPIError", 1, 0)


def test_a_stream_that_yielded_is_not_retried(backoff: list[float]) -> None:
    script = Script(list(SCENARIOS["fails-after-a-chunk"]))
    got: list[Any] = []
    with pytest.raises(ProviderAPIError):
        for item in _new().stream(script.gen):
            got.append(item)
    assert got == ["a"] and script.attempts == 1 and backoff == []


def test_stopping_early_closes_the_attempt(backoff: list[float]) -> None:
    script = Script([["a", "b", "c"]])
    it = _new().stream(script.gen)
    assert next(it) == "a"
    it.close()  # type: ignore[attr-defined]
    assert script.closed == [True]

    ascript = Script([["a", "b", "c"]])

    async def first() -> None:
        ait = _new().astream(ascript.agen)
        assert await anext(ait) == "a"
        await ait.aclose()  # type: ignore[attr-defined]

    asyncio.run(first())
    assert ascript.closed == [True]


def test_waits_honour_retry_after(backoff: list[float]) -> None:
    script = Script(list(SCENARIOS["429-then-ok"]))
    assert _new().run(script.call) == ["a", "b"]
    assert backoff == [0.25]
