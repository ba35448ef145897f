"""The tool loop end to end over real HTTP: ``llm.run_tools`` and ``await llm.arun_tools``."""

from __future__ import annotations

from typing import Any

import pytest
from servers import PROVIDERS
from tools_fixtures import get_time, get_weather, replayed

from abstractcore import tool
from abstractcore.errors import MaxTurnsExceededError


@pytest.mark.parametrize("kind", PROVIDERS)
def test_run_tools(kind: str, make_llm: Any, fake: Any) -> None:
    llm = make_llm(kind)
    run = llm.run_tools("weather in Paris and Rome", tools=[get_weather, get_time])
    assert run.response.content == "Result: sunny in Paris | sunny in Rome"
    assert run.response.finish_reason == "stop" and run.turns == 2
    assert [r.output for r in run.tool_results] == ["sunny in Paris", "sunny in Rome"]
    assert [m.role for m in run.messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert run.usage.completion_tokens > 0
    first, second = (r.json for r in fake.requests(llm.model))
    calls = run.messages[1].tool_calls
    assert second["messages"][1:] == replayed(
        kind, run.messages[1].content, calls, ["sunny in Paris", "sunny in Rome"]
    )
    assert first["messages"] == second["messages"][:1]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_arun_tools_runs_a_turns_calls_concurrently(
    kind: str, make_llm: Any, fake: Any, no_blocking_loop: Any
) -> None:
    seen: list[str] = []

    @tool
    async def lookup(city: str) -> str:
        """Look a city up."""
        seen.append(city)
        return f"{city} found"

    async with make_llm(kind) as llm:
        run = await llm.arun_tools("find Paris and Rome", tools=[lookup])
    assert run.response.content == "Result: Paris found | Rome found"
    assert sorted(seen) == ["Paris", "Rome"] and run.turns == 2
    assert fake.attempts(llm.model) == 2


def test_tool_choice_applies_to_the_first_turn_only(make_llm: Any, fake: Any) -> None:
    llm = make_llm("openai")
    run = llm.run_tools("weather in Paris", tools=[get_weather], tool_choice="required")
    assert run.response.content == "Result: sunny in Paris"
    first, second = (r.json for r in fake.requests(llm.model))
    assert first["tool_choice"] == "required" and "tool_choice" not in second


@pytest.mark.parametrize("kind", PROVIDERS)
def test_arguments_that_do_not_validate_are_told_to_the_model(
    kind: str, make_llm: Any, fake: Any
) -> None:
    llm = make_llm(kind, "bad-always")
    run = llm.run_tools("weather in Paris", tools=[get_weather])
    (result,) = run.tool_results
    assert result.error is not None and "city" in result.error and result.output is None
    # The error went back as the tool's result, and the model answered it.
    assert run.response.content.startswith("Result: Error: ")
    assert fake.attempts(llm.model) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_max_turns(kind: str, make_llm: Any, fake: Any) -> None:
    async with make_llm(kind, "loop-forever") as llm:
        with pytest.raises(MaxTurnsExceededError) as info:
            await llm.arun_tools("weather in Paris", tools=[get_weather], max_turns=3)
    assert info.value.result.turns == 3 and len(info.value.result.tool_results) == 2
    assert fake.attempts(llm.model) == 3
