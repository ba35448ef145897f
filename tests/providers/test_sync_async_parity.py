"""Same inputs, same outputs and same errors from all four verbs of every HTTP provider."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from servers import PROVIDERS, VERBS, Outcome, run_verb

from abstractcore.errors import (
    AuthenticationError,
    ContextLengthError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
    ProviderAPIError,
    ProviderUnavailableError,
    RateLimitError,
)

# scenario -> what every verb must produce (attempts the server sees per verb)
SCENARIOS: dict[str, tuple[Outcome | type[Exception], int]] = {
    "ok": (Outcome("Echo: hello there world", "stop", (3, 4, 0)), 1),
    "500-then-ok": (Outcome("Echo: hello there world", "stop", (3, 4, 0)), 2),
    "429-then-ok": (Outcome("Echo: hello there world", "stop", (3, 4, 0)), 2),
    "drop-then-ok": (Outcome("Echo: hello there world", "stop", (3, 4, 0)), 2),
    "401": (AuthenticationError, 1),
    "404": (ModelNotFoundError, 1),
    "400": (InvalidRequestError, 1),
    "429": (RateLimitError, 3),
    "500": (ProviderAPIError, 3),
    "overloaded": (OverloadedError, 3),
    "drop": (ProviderUnavailableError, 3),
    "drop-mid-body": (ProviderAPIError, 1),
    "malformed": (ProviderAPIError, 1),
    "wrong-shape": (ProviderAPIError, 1),
}


@pytest.mark.anyio
@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_four_verbs_agree(kind: str, scenario: str, make_llm: Any, fake: Any) -> None:
    expected, attempts = SCENARIOS[scenario]
    outcomes: dict[str, Outcome] = {}
    for verb in VERBS:
        async with make_llm(kind, scenario) as llm:
            outcomes[verb] = await run_verb(llm, verb)
        assert fake.attempts(llm.model) == attempts, verb
    assert len(set(outcomes.values())) == 1, outcomes
    got = outcomes["generate"]
    if isinstance(expected, Outcome):
        assert got == expected
    else:
        assert got.error is expected


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_context_overflow_agrees(kind: str, make_llm: Any) -> None:
    async with make_llm(kind, "context") as llm:
        outcomes = {verb: await run_verb(llm, verb) for verb in VERBS}
    assert {o.error for o in outcomes.values()} == {ContextLengthError}


@pytest.mark.anyio
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_validation_errors_agree(kind: str, make_llm: Any) -> None:
    """Bad arguments fail at the call, before any I/O, identically for every verb."""
    async with make_llm(kind) as llm:
        for call in (
            lambda: llm.generate("x", temperature=-1),
            lambda: llm.agenerate("x", temperature=-1),
            lambda: llm.stream("x", temperature=-1),
            lambda: llm.astream("x", temperature=-1),
        ):
            with pytest.raises(InvalidRequestError) as info:
                result = call()
                if inspect.isawaitable(result):
                    await result
            assert info.value.field == "temperature"
