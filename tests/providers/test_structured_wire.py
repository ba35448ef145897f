"""Structured output over real HTTP: each provider's native mapping on the wire (OpenAI's
strict json_schema, Anthropic's forced tool, Ollama's format), parsed values from every verb,
the one retry with the error fed back, and StructuredOutputError."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel
from servers import PROVIDERS, VERBS, answer

from abstractcore.errors import StructuredOutputError
from abstractcore.structured import strict_schema


class City(BaseModel):
    """A city and its population."""

    name: str
    population: int


CITY_SCHEMA = City.model_json_schema()
PARIS = City(name="Paris", population=5)  # the fake model: strings the word, ints its length
PARIS_JSON = '{"name": "Paris", "population": 5}'
BAD_JSON = '{"name": 0, "population": "wrong"}'  # what the fake writes when told to be wrong


def _native(kind: str, body: dict[str, Any]) -> Any:
    """The part of a request body that asks for structured output."""
    if kind == "openai":
        return body["response_format"]
    if kind == "anthropic":
        return {"tools": body["tools"], "tool_choice": body["tool_choice"]}
    return body["format"]


@pytest.mark.anyio
@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_response_model(kind: str, verb: str, make_llm: Any, fake: Any) -> None:
    async with make_llm(kind) as llm:
        got = await answer(llm, verb, "describe Paris", response_model=City)
    assert got.parsed == PARIS and isinstance(got.parsed, City)
    assert (got.content, got.finish_reason, got.tool_calls) == (PARIS_JSON, "stop", [])
    if got.chunks:  # the raw JSON really streamed, in pieces, before the parsed value
        texts = [c.content for c in got.chunks if c.content]
        assert len(texts) > 2 and "".join(texts) == PARIS_JSON
        assert all(c.parsed is None for c in got.chunks[:-1])
    (request,) = fake.requests(llm.model)
    expected = {
        "openai": {
            "type": "json_schema",
            "json_schema": {
                "name": "City",
                "schema": strict_schema(CITY_SCHEMA),
                "strict": True,
                "description": "A city and its population.",
            },
        },
        "anthropic": {
            "tools": [
                {
                    "name": "City",
                    "description": "A city and its population.",
                    "input_schema": CITY_SCHEMA,
                }
            ],
            "tool_choice": {"type": "tool", "name": "City"},
        },
        "ollama": CITY_SCHEMA,
    }[kind]
    assert _native(kind, request.json) == expected


LOOSE = {  # "tag" is optional: strict mode cannot express this schema
    "type": "object",
    "properties": {"name": {"type": "string"}, "tag": {"type": "string"}},
    "required": ["name"],
}


@pytest.mark.anyio
@pytest.mark.parametrize("verb", ["generate", "astream"])
@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("strict", [True, False])
async def test_response_format_json_schema(
    kind: str, verb: str, strict: bool, make_llm: Any, fake: Any
) -> None:
    spec = {"name": "entry", "schema": LOOSE, "strict": strict}
    fmt = {"type": "json_schema", "json_schema": spec}
    async with make_llm(kind) as llm:
        got = await answer(llm, verb, "describe Paris", response_format=fmt)
    assert got.parsed == {"name": "Paris"} and got.content == '{"name": "Paris"}'
    native = _native(kind, fake.requests(llm.model)[0].json)
    if kind == "openai":  # strict asked for but impossible: sent non-strict, schema as given
        assert native == {
            "type": "json_schema",
            "json_schema": {"name": "entry", "schema": LOOSE, "strict": False},
        }
    elif kind == "anthropic":
        assert native["tools"] == [
            {
                "name": "entry",
                "description": native["tools"][0]["description"],
                "input_schema": LOOSE,
            }
        ]
        assert native["tool_choice"] == {"type": "tool", "name": "entry"}
    else:
        assert native == LOOSE


def test_openai_strict_schema_is_closed(make_llm: Any, fake: Any) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "e", "schema": schema, "strict": True}}
    llm = make_llm("openai")
    assert llm.generate("describe Paris", response_format=fmt).parsed == {"name": "Paris"}
    sent = fake.requests(llm.model)[0].json["response_format"]["json_schema"]
    assert sent["strict"] is True and sent["schema"] == {**schema, "additionalProperties": False}


@pytest.mark.anyio
@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_response_format_json_object(kind: str, verb: str, make_llm: Any, fake: Any) -> None:
    async with make_llm(kind) as llm:
        got = await answer(
            llm, verb, "describe Paris in JSON", response_format={"type": "json_object"}
        )
    assert got.parsed == {"answer": "JSON"} and json.loads(got.content) == got.parsed
    native = _native(kind, fake.requests(llm.model)[0].json)
    if kind == "openai":
        assert native == {"type": "json_object"}
    elif kind == "anthropic":
        (forced,) = native["tools"]
        assert forced["input_schema"] == {"type": "object"}
        assert native["tool_choice"] == {"type": "tool", "name": forced["name"]}
    else:
        assert native == "json"


# ---------------------------------------------------------------------- retry and failure
@pytest.mark.anyio
@pytest.mark.parametrize("verb", ["generate", "agenerate"])
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_invalid_first_answer_is_retried_once(
    kind: str, verb: str, make_llm: Any, fake: Any
) -> None:
    async with make_llm(kind, "bad-once") as llm:
        got = await answer(llm, verb, "describe Paris", response_model=City)
    assert got.parsed == PARIS
    first, second = (r.json for r in fake.requests(llm.model))
    fed_back = second["messages"][len(first["messages"]) :]
    assert fed_back[0] == {"role": "assistant", "content": BAD_JSON}
    assert fed_back[1]["role"] == "user" and len(fed_back) == 2
    assert "does not match the required JSON schema" in fed_back[1]["content"]
    assert "name" in fed_back[1]["content"] and "population" in fed_back[1]["content"]
    assert _native(kind, second) == _native(kind, first)  # the retry asks for the same format


@pytest.mark.anyio
@pytest.mark.parametrize("verb", ["generate", "agenerate"])
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_invalid_twice_raises(kind: str, verb: str, make_llm: Any, fake: Any) -> None:
    async with make_llm(kind, "bad-always") as llm:
        with pytest.raises(StructuredOutputError) as info:
            await answer(llm, verb, "describe Paris", response_model=City)
    assert info.value.raw == BAD_JSON
    assert "name" in info.value.errors and "population" in info.value.errors
    assert info.value.response is not None and info.value.response.content == BAD_JSON
    assert fake.attempts(llm.model) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("verb", ["stream", "astream"])
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_invalid_stream_raises_at_its_end(
    kind: str, verb: str, make_llm: Any, fake: Any
) -> None:
    async with make_llm(kind, "bad-always") as llm:
        with pytest.raises(StructuredOutputError) as info:
            await answer(llm, verb, "describe Paris", response_model=City)
    assert info.value.raw == BAD_JSON
    assert fake.attempts(llm.model) == 1  # its text was already out: no retry


def test_cut_off_json_is_not_retried(make_llm: Any, fake: Any) -> None:
    llm = make_llm("openai")
    with pytest.raises(StructuredOutputError) as info:
        llm.generate("describe Paris", response_model=City, max_output_tokens=2)
    assert info.value.response is not None and info.value.response.finish_reason == "length"
    assert fake.attempts(llm.model) == 1
