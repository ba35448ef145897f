"""tool_choice, parallel_tool_calls and strict tools on each provider's wire, and what a
backend cannot do refused before any request is sent."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel
from servers import VERBS
from tools_fixtures import get_time, get_weather

from abstractcore import tool
from abstractcore.errors import InvalidRequestError, UnsupportedFeatureError
from abstractcore.structured import strict_schema

TOOLS = [get_weather, get_time]


def _called(response: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(c.name, c.arguments) for c in response.tool_calls]


# ---------------------------------------------------------------------- OpenAI
@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ("get_time", {"type": "function", "function": {"name": "get_time"}}),
        ({"type": "function", "function": {"name": "get_time"}}, None),  # OpenAI's own shape
    ],
)
def test_openai_tool_choice(choice: Any, wire: Any, make_llm: Any, fake: Any) -> None:
    llm = make_llm("openai")
    response = llm.generate("weather in Paris", tools=TOOLS, tool_choice=choice)
    sent = fake.requests(llm.model)[0].json
    assert sent["tool_choice"] == (wire or choice)
    assert "parallel_tool_calls" not in sent  # not given, not sent
    if choice == "none":
        assert response.tool_calls == [] and response.content == "Echo: weather in Paris"
    elif choice in ("auto", "required"):
        assert _called(response) == [("get_weather", {"city": "Paris"})]
    else:
        assert _called(response) == [("get_time", {"zone": "Paris"})]


@pytest.mark.parametrize("kind", ["openai", "openai-compatible", "lmstudio"])
@pytest.mark.parametrize("parallel", [True, False])
def test_openai_parallel_tool_calls(kind: str, parallel: bool, make_llm: Any, fake: Any) -> None:
    llm = make_llm(kind)
    response = llm.generate(
        "weather in Paris and Rome", tools=[get_weather], parallel_tool_calls=parallel
    )
    assert fake.requests(llm.model)[0].json["parallel_tool_calls"] is parallel
    assert len(response.tool_calls) == (2 if parallel else 1)


def test_openai_strict_tools(make_llm: Any, fake: Any) -> None:
    @tool(strict=True)
    def closed(city: str) -> str:
        """Every parameter required: strict mode can express it."""
        return city

    @tool(strict=True)
    def open_ended(city: str, days: int = 3) -> str:
        """An optional parameter: strict mode cannot express it."""
        return city

    llm = make_llm("openai")
    llm.generate("weather in Paris", tools=[closed, open_ended, get_weather])
    sent = [t["function"] for t in fake.requests(llm.model)[0].json["tools"]]
    assert sent[0]["strict"] is True
    assert sent[0]["parameters"] == strict_schema(closed.parameters)
    assert sent[0]["parameters"]["additionalProperties"] is False
    assert "strict" not in sent[1] and sent[1]["parameters"] == open_ended.parameters
    assert "strict" not in sent[2]  # a tool that did not ask for it

    # The fake enforces strict mode's rule, as the API does: sent strict, it is refused.
    forced = [{"type": "function", "function": {**sent[1], "strict": True}}]
    with pytest.raises(InvalidRequestError) as info:
        make_llm("openai").generate("x", tools=[open_ended], extra_body={"tools": forced})
    assert "required" in str(info.value) and info.value.status_code == 400


# ---------------------------------------------------------------------- Anthropic
@pytest.mark.parametrize(
    ("choice", "parallel", "wire"),
    [
        (None, None, None),
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("get_time", None, {"type": "tool", "name": "get_time"}),
        ("none", None, {"type": "none"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (
            "get_time",
            False,
            {"type": "tool", "name": "get_time", "disable_parallel_tool_use": True},
        ),
        ("none", False, {"type": "none"}),  # the API has no such switch on "none"
        (None, True, None),  # the API's default
    ],
)
def test_anthropic_tool_choice(
    choice: Any, parallel: Any, wire: Any, make_llm: Any, fake: Any
) -> None:
    llm = make_llm("anthropic")
    response = llm.generate(
        "weather in Paris and Rome", tools=TOOLS, tool_choice=choice, parallel_tool_calls=parallel
    )
    assert fake.requests(llm.model)[0].json.get("tool_choice") == wire
    if choice == "none":
        assert response.tool_calls == [] and response.content == "Echo: weather in Paris and Rome"
    elif choice == "get_time":  # a forced tool is called once
        assert _called(response) == [("get_time", {"zone": "Rome"})]
    else:
        assert len(response.tool_calls) == (1 if parallel is False else 2)


# ---------------------------------------------------------------------- Ollama
def test_ollama_tool_choice_none_sends_no_tools(make_llm: Any, fake: Any) -> None:
    llm = make_llm("ollama")
    response = llm.generate("weather in Paris", tools=TOOLS, tool_choice="none")
    assert "tools" not in fake.requests(llm.model)[0].json
    assert response.tool_calls == [] and response.content == "Echo: weather in Paris"
    auto = llm.generate("weather in Paris", tools=TOOLS, tool_choice="auto")
    assert "tool_choice" not in fake.requests(llm.model)[1].json  # the API has none
    assert _called(auto) == [("get_weather", {"city": "Paris"})]


async def _refused(llm: Any, verb: str, **kw: Any) -> UnsupportedFeatureError:
    with pytest.raises(UnsupportedFeatureError) as info:
        if verb == "generate":
            llm.generate("weather in Paris", **kw)
        elif verb == "agenerate":
            await llm.agenerate("weather in Paris", **kw)
        elif verb == "stream":
            llm.stream("weather in Paris", **kw)  # refused at the call, not at iteration
        else:
            llm.astream("weather in Paris", **kw)
    return info.value


@pytest.mark.anyio
@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize(
    ("field", "kw"),
    [
        ("tool_choice", {"tool_choice": "required"}),
        ("tool_choice", {"tool_choice": "get_time"}),
        ("parallel_tool_calls", {"parallel_tool_calls": False}),
    ],
)
async def test_ollama_refuses_what_it_cannot_enforce(
    verb: str, field: str, kw: dict[str, Any], make_llm: Any, fake: Any
) -> None:
    async with make_llm("ollama") as llm:
        error = await _refused(llm, verb, tools=TOOLS, **kw)
    assert error.field == field and error.provider == "ollama"
    assert fake.attempts(llm.model) == 0  # nothing reached the server


class City(BaseModel):
    name: str


@pytest.mark.anyio
@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize(
    ("field", "kw"),
    [
        ("logprobs", {"logprobs": True}),
        ("response_format", {"tools": TOOLS, "response_format": {"type": "json_object"}}),
        ("response_model", {"tools": TOOLS, "response_model": City}),
        (
            "response_format",
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "cities", "schema": {"type": "array"}},
                }
            },
        ),
    ],
)
async def test_anthropic_refuses_what_it_cannot_do(
    verb: str, field: str, kw: dict[str, Any], make_llm: Any, fake: Any
) -> None:
    async with make_llm("anthropic") as llm:
        error = await _refused(llm, verb, **kw)
    assert error.field == field and error.provider == "anthropic"
    assert fake.attempts(llm.model) == 0
