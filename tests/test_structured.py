"""Structured output: response_model / response_format normalized, parsed, validated."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from abstractcore.errors import InvalidRequestError
from abstractcore.structured import ResponseFormat, response_format_from, strict_schema


class City(BaseModel):
    """A city and its population."""

    name: str
    population: int


class Loose(BaseModel):
    name: str
    note: str = ""


SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "n": {"type": "integer"}},
    "required": ["answer", "n"],
}


def test_response_model_parses_to_an_instance() -> None:
    fmt = response_format_from(City, None)
    assert fmt is not None and fmt.kind == "json_schema" and fmt.model is City
    assert fmt.name == "City" and fmt.description == "A city and its population."
    assert fmt.strict  # every field required: OpenAI's strict mode can express it
    assert fmt.parse('{"name": "Lyon", "population": 520000}') == City(
        name="Lyon", population=520000
    )
    with pytest.raises(ValueError, match="population"):
        fmt.parse('{"name": "Lyon"}')


def test_code_fence_around_the_json_is_accepted() -> None:
    fmt = response_format_from(City, None)
    assert fmt is not None
    assert fmt.parse('```json\n{"name": "Nice", "population": 3}\n```').name == "Nice"


def test_json_schema_format_and_json_object() -> None:
    spec = {"type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA}}
    fmt = response_format_from(None, spec)
    assert fmt is not None and fmt.name == "reply" and not fmt.strict and fmt.model is None
    assert fmt.parse('{"answer": "yes", "n": 2}') == {"answer": "yes", "n": 2}
    with pytest.raises(ValueError, match="n: 'two' is not of type 'integer'"):
        fmt.parse('{"answer": "yes", "n": "two"}')
    obj = response_format_from(None, {"type": "json_object"})
    assert obj == ResponseFormat(kind="json_object")
    assert obj.parse('{"any": [1]}') == {"any": [1]}
    for bad in ("[1, 2]", "nope"):
        with pytest.raises(ValueError):
            obj.parse(bad)
    assert response_format_from(None, {"type": "text"}) is None
    assert response_format_from(None, City) == response_format_from(City, None)


@pytest.mark.parametrize(
    ("model", "fmt", "field"),
    [
        (City, {"type": "json_object"}, "response_format"),
        (dict, None, "response_model"),
        (None, "json", "response_format"),
        (None, {"type": "xml"}, "response_format.type"),
        (None, {"type": "json_object", "schema": {}}, "response_format.schema"),
        (None, {"type": "json_schema"}, "response_format.json_schema"),
        (
            None,
            {"type": "json_schema", "json_schema": {"name": "x"}},
            "response_format.json_schema.schema",
        ),
        (
            None,
            {"type": "json_schema", "json_schema": {"name": "bad name", "schema": SCHEMA}},
            "response_format.json_schema.name",
        ),
        (
            None,
            {"type": "json_schema", "json_schema": {"schema": {"type": "bogus"}}},
            "response_format.json_schema.schema",
        ),
        (
            None,
            {"type": "json_schema", "json_schema": {"schema": SCHEMA, "strict": "yes"}},
            "response_format.json_schema.strict",
        ),
        (
            None,
            {"type": "json_schema", "json_schema": {"schema": SCHEMA, "extra": 1}},
            "response_format.json_schema.extra",
        ),
    ],
)
def test_bad_formats_name_the_field(model: Any, fmt: Any, field: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        response_format_from(model, fmt)
    assert info.value.field == field, info.value


def test_strict_schema_closes_objects_or_gives_up() -> None:
    strict = strict_schema(City.model_json_schema())
    assert strict is not None and strict["additionalProperties"] is False
    assert strict_schema(Loose.model_json_schema()) is None  # 'note' is optional
    open_schema = {**SCHEMA, "additionalProperties": True}
    assert strict_schema(open_schema) is None
    nested = {
        "type": "object",
        "properties": {
            "inner": {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
        },
        "required": ["inner"],
    }
    closed = strict_schema(nested)
    assert closed is not None and closed["properties"]["inner"]["additionalProperties"] is False
    assert "additionalProperties" not in nested["properties"]["inner"]  # input left as it was
