"""Tool definitions: schemas from functions, models and JSON, names, argument validation."""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

import abstractcore
from abstractcore.errors import InvalidRequestError, ToolCallError
from abstractcore.tools import Tool, ToolCallAssembler, normalize_tools, tool, validate_tool_calls
from abstractcore.types import ToolCall, ToolCallDelta


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


class Place(BaseModel):
    """Where to look."""

    city: str
    country: str | None = None


@tool
def get_weather(
    place: Place,
    unit: Unit = Unit.CELSIUS,
    days: int = 1,
    detail: Literal["brief", "full"] = "brief",
    tags: list[str] | None = None,
) -> str:
    """Look up the weather forecast.

    Args:
        place: the city (and country) to look up.
        unit: temperature unit.
        days: how many days ahead,
            counting today.
        detail: how much to say.
        tags: labels to attach.

    Returns:
        A short forecast.
    """
    return f"{place.city}: sunny for {days} day(s) in {unit.value}"


def test_function_schema_from_signature_and_docstring() -> None:
    assert isinstance(get_weather, Tool)
    assert get_weather.name == "get_weather"
    assert get_weather.description == "Look up the weather forecast."
    schema = get_weather.parameters
    assert schema["type"] == "object"
    assert schema["required"] == ["place"]
    props = schema["properties"]
    assert props["place"]["description"] == "the city (and country) to look up."
    assert props["days"] == {
        "default": 1,
        "description": "how many days ahead, counting today.",
        "title": "Days",
        "type": "integer",
    }
    assert props["detail"]["enum"] == ["brief", "full"]
    assert props["tags"]["anyOf"][0] == {"items": {"type": "string"}, "type": "array"}
    assert schema["$defs"]["Unit"]["enum"] == ["celsius", "fahrenheit"]
    assert schema["$defs"]["Place"]["required"] == ["city"]
    assert schema["additionalProperties"] is False
    assert "Returns" not in get_weather.description


def test_decorated_tool_is_still_callable_and_exported() -> None:
    assert get_weather(place=Place(city="Paris")) == "Paris: sunny for 1 day(s) in celsius"
    assert abstractcore.tool is tool and abstractcore.Tool is Tool


def test_call_arguments_convert_nested_models_and_enums() -> None:
    args = get_weather.call_arguments({"place": {"city": "Oslo"}, "unit": "fahrenheit"})
    assert args["place"] == Place(city="Oslo") and args["unit"] is Unit.FAHRENHEIT
    assert get_weather.function is not None and get_weather.function(**args).startswith("Oslo")


def test_decorator_with_options_and_sphinx_docstring() -> None:
    @tool(name="add-numbers", description="Adds.", strict=True)
    def add(a: int, b: Annotated[int, Field(description="second")] = 2) -> int:
        """Ignored.

        :param a: the first number
        """
        return a + b

    assert add.name == "add-numbers" and add.description == "Adds." and add.strict
    assert add.parameters["properties"]["a"]["description"] == "the first number"
    assert add.parameters["properties"]["b"]["description"] == "second"
    assert add(a=1) == 3


def test_async_functions_and_untyped_parameters() -> None:
    async def lookup(query, limit: int = 3):  # type: ignore[no-untyped-def]
        """Search."""
        return [query] * limit

    t = Tool.from_function(lookup)
    assert t.parameters["required"] == ["query"]
    assert t.parameters["properties"]["query"] == {"title": "Query"}


@pytest.mark.parametrize(
    "fn_src",
    [
        "def f(*args: int) -> None: ...",
        "def f(**kw: int) -> None: ...",
        "def f(a: int, /) -> None: ...",
    ],
)
def test_functions_a_model_cannot_call_are_refused(fn_src: str) -> None:
    ns: dict[str, Any] = {}
    exec(fn_src, ns)
    with pytest.raises(InvalidRequestError) as info:
        Tool.from_function(ns["f"])
    assert info.value.field == "tools"


def test_pydantic_model_as_tool() -> None:
    t = Tool.from_model(Place)
    assert t.name == "Place" and t.description == "Where to look."
    assert t.parameters["required"] == ["city"] and t.function is None
    with pytest.raises(ValueError, match="city"):
        t.validate_arguments({"country": "FR"})


@pytest.mark.parametrize(
    "spec",
    [
        {
            "type": "function",
            "function": {
                "name": "search",
                "description": "Search the web.",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        },
        {
            "name": "search",
            "description": "Search the web.",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
        {
            "name": "search",
            "description": "Search the web.",
            "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    ],
)
def test_schema_shapes(spec: dict[str, Any]) -> None:
    (t,) = normalize_tools([spec])
    assert t.name == "search" and t.description == "Search the web."
    assert t.parameters["properties"] == {"q": {"type": "string"}}
    assert t.validate_arguments({"q": "x"}) == {"q": "x"}
    with pytest.raises(ValueError, match="q: 3 is not of type 'string'"):
        t.validate_arguments({"q": 3})


@pytest.mark.parametrize(
    ("tools", "field"),
    [
        ([{"name": "has space"}], "tools[0].name"),
        ([{"name": "x" * 65}], "tools[0].name"),
        ([{"name": "ok", "parameters": {"type": "nonsense"}}], "tools[0].parameters"),
        ([{"name": "ok", "parameters": {"type": "array"}}], "tools[0].parameters"),
        ([{"name": "ok", "parameters": "not a schema"}], "tools[0].parameters"),
        ([{"name": "ok", "colour": "red"}], "tools[0]"),
        ([{"type": "retrieval"}], "tools[0].type"),
        ([{"name": "ok"}, {"name": "ok"}], "tools[1].name"),
        ([{"name": "ok"}, 42], "tools[1]"),
        ("search", "tools"),
    ],
)
def test_bad_tool_definitions_name_the_field(tools: Any, field: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        normalize_tools(tools)
    assert info.value.field == field, info.value


def test_assembler_joins_fragments_by_index() -> None:
    asm = ToolCallAssembler()
    asm.add([ToolCallDelta(index=1, id="b", name="two", arguments='{"x":')])
    asm.add([ToolCallDelta(index=0, id="a", name="one", arguments='{"s": "a\\')])
    asm.add([ToolCallDelta(index=0, arguments='"b"}'), ToolCallDelta(index=1, arguments=" 1}")])
    calls = asm.calls()
    assert [(c.id, c.name, c.arguments) for c in calls] == [
        ("a", "one", {"s": 'a"b'}),
        ("b", "two", {"x": 1}),
    ]
    assert calls[0].raw_arguments == '{"s": "a\\"b"}'


def test_validate_tool_calls_errors_carry_the_raw_text() -> None:
    tools = normalize_tools([get_weather])
    good = ToolCall(id="1", name="get_weather", arguments='{"place": {"city": "Rome"}}')
    assert validate_tool_calls([good], tools)[0].arguments == {"place": {"city": "Rome"}}
    cases = [
        (ToolCall(id="1", name="get_weather", arguments="{not json"), "not valid JSON"),
        (ToolCall(id="1", name="get_weather", arguments="[1]"), "not a JSON object"),
        (ToolCall(id="1", name="get_weather", arguments='{"days": 2}'), "place"),
        (ToolCall(id="1", name="nope", arguments="{}"), "not offered"),
    ]
    for call, needle in cases:
        with pytest.raises(ToolCallError, match=needle) as info:
            validate_tool_calls([call], tools)
        assert info.value.raw == call.raw_arguments and info.value.tool_name == call.name


def test_tool_call_accepts_openai_shape_and_fills_raw() -> None:
    wire = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    call = ToolCall.model_validate(wire)
    assert (call.name, call.arguments, call.raw_arguments) == ("f", {"a": 1}, '{"a": 1}')
    built = ToolCall(id="c2", name="f", arguments={"b": [1, 2]})
    assert built.raw_arguments == '{"b": [1, 2]}'
