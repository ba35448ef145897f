"""Grammar-constrained decoding inside the continuous batch, on the embedded model: every
constrained answer validates, its batch-mates' text is unchanged, tool calls, logprobs,
the prompt cache, and bad grammars refused before they take a slot."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

from abstractcore.errors import (
    InvalidRequestError,
    ProviderAPIError,
    RequestTimeoutError,
    UnsupportedFeatureError,
)
from abstractcore.tools import tool

pytestmark = pytest.mark.mlx


def _obj(*required: str, **props: Any) -> dict[str, Any]:
    """A closed object schema (JSON schema's objects are open by default, and a small model
    fills an open object with invented fields until its tokens run out)."""
    return {
        "type": "object",
        "properties": props,
        "required": list(required),
        "additionalProperties": False,
    }


_STR = {"type": "string", "maxLength": 20}
_SMALL = {"type": "integer", "minimum": 0, "maximum": 99}
# Sixteen schemas of the kinds the issue names: nested objects, enums, arrays with bounds,
# numbers with bounds, required and optional fields, strings with patterns.
SCHEMAS: list[dict[str, Any]] = [
    _obj("name", name=_STR),
    _obj("colour", colour={"enum": ["red", "green", "blue"]}),
    _obj("age", age={"type": "integer", "minimum": 0, "maximum": 120}),
    _obj("tags", tags={"type": "array", "items": _STR, "minItems": 1, "maxItems": 3}),
    _obj("city", city=_obj("name", "country", name=_STR, country=_STR)),
    _obj("zip", zip={"type": "string", "pattern": "^[0-9]{5}$"}),
    _obj("ok", ok={"type": "boolean"}, note=_STR),
    _obj("score", score={"type": "number", "minimum": 0, "maximum": 10}),
    _obj("a", "b", a=_SMALL, b=_SMALL),
    _obj("animal", "legs", animal={"enum": ["cat", "dog"]}, legs=_SMALL),
    _obj("items", items={"type": "array", "items": _SMALL, "maxItems": 4}),
    _obj("code", code={"type": "string", "pattern": "^[A-Z]{3}$"}),
    _obj("person", person=_obj("first", first=_STR, age=_SMALL)),
    _obj("answer", answer={"enum": ["yes", "no", "maybe"]}),
    _obj("title", "year", title=_STR, year={"type": "integer", "minimum": 1900, "maximum": 2100}),
    _obj("values", values={"type": "array", "items": {"type": "boolean"}, "maxItems": 2}),
]
_UNSATISFIABLE = {"type": "integer", "minimum": 5, "maximum": 1}
_INCOMPATIBLE = {"allOf": [{"type": "string"}, {"type": "integer"}]}

PROMPTS = [
    "What is the capital of France?",
    "Name three colours.",
    "Write a haiku about the sea.",
    "What is 12 plus 30?",
]


def _format(i: int) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": SCHEMAS[i]}}


@pytest.mark.anyio
async def test_sixteen_constrained_rows_validate_and_leave_sixteen_free_rows_unchanged(
    mlx_llm: Any, reference: Any
) -> None:
    free = [f"{PROMPTS[i % 4]} ({i})" for i in range(16)]
    constrained = [
        mlx_llm.agenerate(
            f"Answer in JSON: example {i}.", response_format=_format(i), max_output_tokens=48
        )
        for i in range(16)
    ]
    plain = [mlx_llm.agenerate(p, max_output_tokens=12) for p in free]
    results = await asyncio.gather(*constrained, *plain)
    for i, r in enumerate(results[:16]):
        assert r.finish_reason == "stop", (i, r.content)
        jsonschema.validate(r.parsed, SCHEMAS[i])
        assert r.parsed == json.loads(r.content)
    for prompt, r in zip(free, results[16:]):
        assert r.content == reference.greedy(mlx_llm.tokenize(prompt), 12)


class Pet(BaseModel):
    """A pet."""

    kind: Literal["cat", "dog", "fish"]
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=30)


def test_a_response_model_is_parsed_and_streams_its_json(mlx_llm: Any) -> None:
    r = mlx_llm.generate("Describe a pet.", response_model=Pet, max_output_tokens=40)
    assert isinstance(r.parsed, Pet) and r.finish_reason == "stop"
    chunks = list(mlx_llm.stream("Describe a pet.", response_model=Pet, max_output_tokens=40))
    assert "".join(c.content for c in chunks) == r.content
    assert chunks[-1].parsed == r.parsed and all(c.parsed is None for c in chunks[:-1])


def test_a_seeded_sampled_constrained_request_is_the_same_alone_and_in_a_batch(
    mlx_llm: Any,
) -> None:
    ask = {"response_model": Pet, "max_output_tokens": 40, "temperature": 0.9, "seed": 11}
    alone = mlx_llm.generate("Describe a pet.", **ask)

    async def in_a_batch() -> Any:
        others = [mlx_llm.agenerate(f"{p} (b)", max_output_tokens=16) for p in PROMPTS * 2]
        rs = await asyncio.gather(mlx_llm.agenerate("Describe a pet.", **ask), *others)
        return rs[0]

    assert asyncio.run(in_a_batch()).parsed == alone.parsed


def test_running_out_of_tokens_inside_the_json_is_length_and_a_typed_error(
    mlx_llm: Any,
) -> None:
    from abstractcore.errors import StructuredOutputError

    with pytest.raises(StructuredOutputError) as info:
        mlx_llm.generate("Describe a pet.", response_model=Pet, max_output_tokens=4)
    assert info.value.response is not None and info.value.response.finish_reason == "length"
    assert info.value.raw.startswith("{")


def test_the_prompt_cache_keeps_working_for_constrained_requests(mlx_llm: Any) -> None:
    messages = [{"role": "user", "content": "Describe a pet for a long story about a farm."}]
    first = mlx_llm.generate(
        messages=messages, response_model=Pet, max_output_tokens=40, prompt_cache_key="pets"
    )
    again = mlx_llm.generate(
        messages=[*messages, first.message(), {"role": "user", "content": "Another one."}],
        response_model=Pet,
        max_output_tokens=40,
        prompt_cache_key="pets",
    )
    assert isinstance(again.parsed, Pet) and again.usage.cached_tokens > 10


# ---------------------------------------------------------------------- tools
@tool
def get_weather(city: str) -> str:
    """The weather in a city.

    Args:
        city: the city's name
    """
    return f"sunny in {city}"


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def test_tools_in_the_system_prompt_are_a_shared_prefix(mlx_llm: Any) -> None:
    kw: dict[str, Any] = {"tools": [get_weather, add], "tool_choice": "required",
                          "max_output_tokens": 30}  # fmt: skip
    first = mlx_llm.generate("Weather in Lima?", **kw)
    second = mlx_llm.generate("What is 4 plus 9?", **kw)
    assert first.tool_calls and second.tool_calls
    # everything up to the user's words (the tools' description) came from the cache
    assert second.usage.prompt_tokens > 150
    assert second.usage.cached_tokens >= second.usage.prompt_tokens - 20


@pytest.mark.parametrize("choice", ["required", "get_weather"])
def test_a_forced_tool_call_round_trip(mlx_llm: Any, choice: str) -> None:
    tools = [get_weather, add]
    r = mlx_llm.generate(
        "What is the weather in Paris?", tools=tools, tool_choice=choice, max_output_tokens=60
    )
    assert r.finish_reason == "tool_calls" and r.content == ""
    (call, *more) = r.tool_calls
    if choice == "get_weather":
        assert call.name == "get_weather" and not more
    chunks = list(
        mlx_llm.stream(
            "What is the weather in Paris?", tools=tools, tool_choice=choice, max_output_tokens=60
        )
    )
    assert "".join(c.content for c in chunks) == ""  # the markup never reaches content
    assert chunks[-1].tool_calls == [
        c.model_copy(update={"id": s.id}) for c, s in zip(r.tool_calls, chunks[-1].tool_calls)
    ]
    result = get_weather.function(**call.arguments) if call.name == "get_weather" else "3"
    final = mlx_llm.generate(
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            r.message(),
            {"role": "tool", "tool_call_id": call.id, "content": result},
        ],
        tools=tools,
        tool_choice="none",
        max_output_tokens=16,
    )
    assert final.finish_reason in ("stop", "length") and final.content and not final.tool_calls


def test_auto_tool_calls_are_parsed_from_the_models_own_text(mlx_llm: Any) -> None:
    from abstractcore.providers.mlx.tool_format import ToolCallParser, tool_format_for

    fmt = tool_format_for(mlx_llm.engine.tokenizer)
    parser = ToolCallParser(fmt, [get_weather])
    text = 'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n'
    pieces = [text[:15], text[15:30], text[30:], "</tool_call>"]
    content, deltas = "", []
    for piece in pieces:
        c, d = parser.feed(piece)
        content, deltas = content + c, deltas + d
    assert content == "Let me check." and [(d.name, json.loads(d.arguments)) for d in deltas] == [
        ("get_weather", {"city": "Oslo"})
    ]
    r = mlx_llm.generate("What is the weather in Paris?", tools=[get_weather], max_output_tokens=40)
    assert "<tool_call>" not in r.content
    assert r.finish_reason == ("tool_calls" if r.tool_calls else r.finish_reason)


def test_parallel_tool_calls_false_needs_a_forced_choice(mlx_llm: Any) -> None:
    with pytest.raises(UnsupportedFeatureError) as info:
        mlx_llm.generate("Hi", tools=[add], parallel_tool_calls=False)
    assert info.value.field == "parallel_tool_calls"
    r = mlx_llm.generate(
        "Add 2 and 3.", tools=[add], tool_choice="add", parallel_tool_calls=False,
        max_output_tokens=40,
    )  # fmt: skip
    assert len(r.tool_calls) == 1 and r.tool_calls[0].name == "add"


# ---------------------------------------------------------------------- logprobs
def test_logprobs_are_the_greedy_arg_max_and_match_mlx_lm(mlx_llm: Any, reference: Any) -> None:
    import mlx.core as mx

    prompt = "What is the capital of France?"
    r = mlx_llm.generate(prompt, logprobs=True, top_logprobs=3, max_output_tokens=8)
    assert r.logprobs is not None and len(r.logprobs) == r.usage.completion_tokens
    tokens = mlx_llm.tokenize(prompt)
    generated = mlx_llm.engine.tokenizer.encode(r.content, add_special_tokens=False)
    logits = reference.model(mx.array(tokens + generated)[None])[0]
    expected = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    for i, lp in enumerate(r.logprobs[: len(generated)]):
        row = expected[len(tokens) - 1 + i]
        assert lp.logprob == pytest.approx(float(row.max()), abs=2e-3)  # greedy: the arg-max
        assert [t.logprob for t in lp.top_logprobs] == sorted(
            (t.logprob for t in lp.top_logprobs), reverse=True
        )
        assert lp.top_logprobs[0].token == lp.token and len(lp.top_logprobs) == 3
        assert bytes(lp.bytes or []).decode("utf-8", "replace") == lp.token
    streamed = list(mlx_llm.stream(prompt, logprobs=True, top_logprobs=3, max_output_tokens=8))
    joined = [lp for c in streamed for lp in (c.logprobs or [])]
    assert [lp.token for lp in joined] == [lp.token for lp in r.logprobs]


def test_rows_without_logprobs_keep_the_fast_path(mlx_llm: Any) -> None:
    async def both() -> list[Any]:
        return await asyncio.gather(
            mlx_llm.agenerate(PROMPTS[0], logprobs=True, max_output_tokens=6),
            mlx_llm.agenerate(PROMPTS[1], max_output_tokens=6),
        )

    with_lp, without = asyncio.run(both())
    assert with_lp.logprobs and all(not lp.top_logprobs for lp in with_lp.logprobs)
    assert without.logprobs is None


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": _UNSATISFIABLE}}},
         "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": _INCOMPATIBLE}}},
         "response_format"),
        ({"tools": [add], "response_model": Pet}, "response_model"),
    ],
)  # fmt: skip
def test_grammars_that_cannot_work_are_refused_before_taking_a_slot(
    mlx_llm: Any, kwargs: dict[str, Any], field: str
) -> None:
    before = mlx_llm.stats()["submitted"]
    with pytest.raises(InvalidRequestError) as info:
        mlx_llm.generate("Hi", **kwargs)
    assert info.value.field == field
    assert mlx_llm.stats()["submitted"] == before


def test_a_failing_matcher_fails_its_request_alone(mlx_llm: Any) -> None:
    from abstractcore.providers.mlx import grammar

    real = grammar.RowGrammar.observe

    def broken(self: Any, token: int) -> None:
        real(self, token)
        if self._calls == 3:
            self.error = "injected matcher failure"

    async def both() -> list[Any]:
        return await asyncio.gather(
            mlx_llm.agenerate("Describe a pet.", response_model=Pet, max_output_tokens=40),
            mlx_llm.agenerate(PROMPTS[0], max_output_tokens=10),
            return_exceptions=True,
        )

    grammar.RowGrammar.observe = broken  # type: ignore[method-assign]
    try:
        failed, fine = asyncio.run(both())
    finally:
        grammar.RowGrammar.observe = real  # type: ignore[method-assign]
    assert isinstance(failed, ProviderAPIError) and "injected matcher failure" in str(failed)
    assert fine.content and fine.finish_reason in ("stop", "length")


def test_timeout_of_a_constrained_request_frees_its_slot(
    mlx_llm: Any, assert_engine_empty: Any
) -> None:
    # A story the grammar cannot close before ~1,000 tokens: the model's own story may end
    # within the timeout (11 tokens on one BLAS), which would test nothing.
    story = {"type": "string", "minLength": 4000}
    long = {"type": "object", "properties": {"story": story}, "required": ["story"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": long}}
    with pytest.raises(RequestTimeoutError):
        mlx_llm.generate("Tell a long story.", response_format=fmt, max_output_tokens=2000,
                         timeout=0.5)  # fmt: skip
    assert_engine_empty(mlx_llm)
    assert _live_row_grammars() == 0


def _live_row_grammars() -> int:
    import gc

    from abstractcore.providers.mlx.grammar import RowGrammar

    gc.collect()
    return sum(isinstance(o, RowGrammar) for o in gc.get_objects())


def test_cancelling_a_constrained_stream_frees_its_slot_and_matcher(
    mlx_llm: Any, assert_engine_empty: Any
) -> None:
    free = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": free}}
    stream = mlx_llm.stream("Tell a long story.", response_format=fmt, max_output_tokens=2000)
    text = "".join(next(stream).content for _ in range(3))
    assert text.startswith("{")  # the grammar was in force
    stream.close()  # closing a stream cancels its request
    assert_engine_empty(mlx_llm)
    assert _live_row_grammars() == 0
    # the slot is usable again: the next constrained request runs to its end
    assert mlx_llm.generate("Describe a pet.", response_model=Pet, max_output_tokens=60).parsed
    assert _live_row_grammars() == 0


def test_every_generated_benchmark_schema_compiles_and_is_cached(mlx_llm: Any) -> None:
    from abstractcore.bench.schemas import generate_schemas, long_schema
    from abstractcore.providers.mlx.grammar import GrammarCompiler
    from abstractcore.structured import response_format_from

    eos = list(mlx_llm.engine.tokenizer.eos_token_ids)
    compiler = GrammarCompiler(
        mlx_llm.model_path / "tokenizer.json", eos, mlx_llm.engine.vocab_size
    )
    schemas = [*generate_schemas(200), long_schema()]
    for _ in range(2):
        for schema in schemas:
            fmt = {"type": "json_schema", "json_schema": {"name": "b", "schema": schema}}
            compiler.for_format(response_format_from(None, fmt), "response_format")
    stats = compiler.stats()
    assert (stats["compiles"], stats["cache_hits"], stats["cached"]) == (201, 201, 201)
    assert mlx_llm.stats()["grammars"]["compiles"] >= 1  # the provider's own compiler reports


def test_a_failed_grammar_allows_exactly_the_eos_tokens_whatever_their_bit() -> None:
    import numpy as np

    from abstractcore.providers.mlx.grammar import RowGrammar, allowed_tokens

    row = RowGrammar(matcher=None, eos=[2, 31, 63], vocab=96)  # 31, 63: bit 31 of a word
    row.error = "failed"
    bitmask = np.full((2, 3), -1, dtype=np.int32)
    row.fill(bitmask, 1)
    allowed = np.array(allowed_tokens(bitmask, 96))
    assert allowed[0].all()  # the other row is untouched
    assert list(np.nonzero(allowed[1])[0]) == [2, 31, 63]
