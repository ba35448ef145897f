"""What BaseProvider does with answers on every provider: tool calls validated, structured
output parsed (one retry with the errors fed back), streams assembled, features refused
before any I/O, and the tool loop.

The provider here is a double of the *contract*: it replays scripted answers, so these tests
exercise base.py, _outputs.py and tools/loop.py, not a backend (the loopback-server tests of
each HTTP provider cover the wire).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from abstractcore import GenerateResponse, StreamChunk, Usage
from abstractcore.errors import (
    InvalidRequestError,
    MaxTurnsExceededError,
    StructuredOutputError,
    ToolCallError,
    UnsupportedFeatureError,
)
from abstractcore.providers.base import BaseProvider, Features
from abstractcore.request import GenerationRequest
from abstractcore.tools import tool
from abstractcore.types import ToolCall, ToolCallDelta

Answer = GenerateResponse | list[StreamChunk]


class ScriptedProvider(BaseProvider):
    """Answers each request with the next scripted response (streamed as its chunks)."""

    provider_name = "scripted"
    features: ClassVar[Features] = Features(
        tools=True, parallel_tool_calls=True, structured_output=True, logprobs=True
    )

    def __init__(self, answers: list[Answer]) -> None:
        super().__init__("scripted-1")
        self.answers = list(answers)
        self.requests: list[GenerationRequest] = []

    def _next(self, request: GenerationRequest) -> list[StreamChunk]:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, list):
            return answer
        deltas = [
            ToolCallDelta(index=i, id=c.id, name=c.name, arguments=c.raw_arguments)
            for i, c in enumerate(answer.tool_calls)
        ]
        return [
            StreamChunk(content=answer.content, tool_call_deltas=deltas),
            StreamChunk(finish_reason=answer.finish_reason, usage=answer.usage),
        ]

    def _stream(self, request: GenerationRequest) -> Iterator[StreamChunk]:
        yield from self._next(request)

    async def _astream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        for chunk in self._next(request):
            yield chunk


def text(content: str, finish: Any = "stop", tokens: int = 3) -> GenerateResponse:
    return GenerateResponse(
        content=content,
        finish_reason=finish,
        model="scripted-1",
        provider="scripted",
        usage=Usage(prompt_tokens=10, completion_tokens=tokens),
    )


def calls(*pairs: tuple[str, str]) -> GenerateResponse:
    made = [ToolCall(id=f"call_{i}", name=n, arguments=a) for i, (n, a) in enumerate(pairs)]
    return text("", "tool_calls").model_copy(update={"tool_calls": made})


class City(BaseModel):
    name: str
    population: int


@tool
def population(city: str) -> int:
    """How many people live in a city."""
    return {"Paris": 2_100_000, "Lyon": 520_000}[city]


@tool
def explode(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(f"boom: {reason}")


# ---------------------------------------------------------------------- structured output
def test_structured_output_is_parsed() -> None:
    llm = ScriptedProvider([text('{"name": "Lyon", "population": 520000}')])
    r = llm.generate("Lyon?", response_model=City)
    assert r.parsed == City(name="Lyon", population=520000)
    assert llm.requests[0].response_format is not None


def test_invalid_output_is_retried_once_with_the_errors() -> None:
    llm = ScriptedProvider([text('{"name": "Lyon"}'), text('{"name": "Lyon", "population": 5}')])
    r = llm.generate("Lyon?", response_model=City)
    assert r.parsed == City(name="Lyon", population=5)
    assert r.usage.completion_tokens == 6 and r.usage.prompt_tokens == 20  # both attempts
    retry = llm.requests[1].messages
    assert [m.role for m in retry] == ["user", "assistant", "user"]
    assert retry[1].content == '{"name": "Lyon"}' and "population" in retry[2].content


@pytest.mark.parametrize("verb", ["generate", "agenerate"])
def test_two_invalid_answers_raise_with_the_raw_text(verb: str) -> None:
    llm = ScriptedProvider([text("not json"), text('{"name": 3}')])
    with pytest.raises(StructuredOutputError) as info:
        if verb == "generate":
            llm.generate("Lyon?", response_model=City)
        else:
            asyncio.run(llm.agenerate("Lyon?", response_model=City))
    err = info.value
    assert err.raw == '{"name": 3}' and "population" in err.errors
    assert err.response is not None and err.response.usage.completion_tokens == 6


def test_cut_off_output_is_not_retried() -> None:
    llm = ScriptedProvider([text('{"name": "Ly', finish="length")])
    with pytest.raises(StructuredOutputError, match="cut off at max_output_tokens") as info:
        llm.generate("Lyon?", response_model=City, max_output_tokens=5)
    assert info.value.response is not None and info.value.response.finish_reason == "length"
    assert len(llm.requests) == 1


def test_stream_of_structured_output_ends_with_parsed() -> None:
    chunks = [
        StreamChunk(content='{"name": "Ly'),
        StreamChunk(content='on", "population": 1}'),
        StreamChunk(finish_reason="stop"),
    ]
    llm = ScriptedProvider([chunks, list(chunks)])
    got = list(llm.stream("Lyon?", response_model=City))
    assert "".join(c.content for c in got) == '{"name": "Lyon", "population": 1}'
    assert got[-1].parsed == City(name="Lyon", population=1) and got[0].parsed is None

    async def collect() -> list[StreamChunk]:
        return [c async for c in llm.astream("Lyon?", response_model=City)]

    assert asyncio.run(collect())[-1].parsed == City(name="Lyon", population=1)


def test_stream_of_invalid_output_raises_at_the_end() -> None:
    llm = ScriptedProvider([[StreamChunk(content="{oops"), StreamChunk(finish_reason="stop")]])
    seen: list[str] = []
    with pytest.raises(StructuredOutputError) as info:
        for chunk in llm.stream("Lyon?", response_format={"type": "json_object"}):
            seen.append(chunk.content)
    assert seen == ["{oops"] and info.value.raw == "{oops"


# ---------------------------------------------------------------------- tool calls
def test_tool_calls_are_validated_and_streamed_whole_at_the_end() -> None:
    answer = calls(("population", '{"city": "Paris"}'))
    llm = ScriptedProvider([answer, answer])
    r = llm.generate("How big is Paris?", tools=[population])
    assert r.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in r.tool_calls] == [("population", {"city": "Paris"})]
    last = list(llm.stream("How big is Paris?", tools=[population]))[-1]
    assert last.tool_calls == r.tool_calls


def test_bad_tool_arguments_raise_tool_call_error() -> None:
    llm = ScriptedProvider([calls(("population", '{"town": "Paris"}'))])
    with pytest.raises(ToolCallError) as info:
        llm.generate("How big is Paris?", tools=[population])
    assert info.value.tool_name == "population" and info.value.raw == '{"town": "Paris"}'
    assert info.value.response is not None and info.value.response.tool_calls


# ---------------------------------------------------------------------- refused up front
class PlainProvider(ScriptedProvider):
    features: ClassVar[Features] = Features(why="plain text only")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tools": [population]}, "tools"),
        ({"response_model": City}, "response_model"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
    ],
)
def test_unsupported_features_fail_before_any_request(kwargs: dict[str, Any], field: str) -> None:
    llm = PlainProvider([])
    for verb in (llm.generate, llm.stream):
        with pytest.raises(UnsupportedFeatureError) as info:
            verb("hi", **kwargs)
        assert info.value.field == field and "plain text only" in str(info.value)
        assert isinstance(info.value, InvalidRequestError)
    assert llm.requests == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [population], "tool_choice": "nope"}, "tool_choice"),
        ({"tools": [population], "tool_choice": 3}, "tool_choice"),
        ({"tools": [population], "tool_choice": {"type": "bogus"}}, "tool_choice"),
        ({"tools": [population], "parallel_tool_calls": "no"}, "parallel_tool_calls"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": "yes"}, "logprobs"),
    ],
)
def test_bad_tool_and_logprob_options_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        ScriptedProvider([]).generate("hi", **kwargs)
    assert info.value.field == field, info.value


def test_tool_choice_shapes_and_tool_result_names() -> None:
    llm = ScriptedProvider([])
    for choice, want in [
        ({"type": "function", "function": {"name": "population"}}, "population"),
        ({"type": "tool", "name": "population"}, "population"),
        ({"type": "any"}, "required"),
        ("none", "none"),
    ]:
        assert llm.build_request("x", tools=[population], tool_choice=choice).tool_choice == want
    req = llm.build_request(
        messages=[
            {"role": "user", "content": "How big is Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "population", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "2100000"},
        ]
    )  # fmt: skip
    assert req.messages[2].name == "population" and req.messages[1].content == ""
    assert llm.build_request("x", logprobs=True).top_logprobs == 0


# ---------------------------------------------------------------------- the tool loop
def test_tool_loop_runs_tools_until_the_answer() -> None:
    llm = ScriptedProvider(
        [
            calls(("population", '{"city": "Paris"}'), ("population", '{"city": "Lyon"}')),
            text("Paris is four times bigger."),
        ]
    )
    run = llm.run_tools("Compare Paris and Lyon.", tools=[population], tool_choice="required")
    assert run.response.content == "Paris is four times bigger." and run.turns == 2
    assert [r.output for r in run.tool_results] == [2_100_000, 520_000]
    assert [m.role for m in run.messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert run.messages[2].tool_call_id == "call_0" and run.messages[2].content == "2100000"
    assert run.usage.completion_tokens == 6
    first, second = llm.requests
    assert first.tool_choice == "required" and second.tool_choice is None


def test_a_raising_tool_and_bad_arguments_become_error_results() -> None:
    llm = ScriptedProvider(
        [
            calls(("explode", '{"reason": "test"}'), ("population", '{"town": 1}')),
            text("Sorry."),
        ]
    )
    run = llm.run_tools("Go.", tools=[explode, population])
    errors = [r.error for r in run.tool_results]
    assert errors[0] == "RuntimeError: boom: test" and "city" in (errors[1] or "")
    sent = [m.content for m in llm.requests[1].messages if m.role == "tool"]
    assert sent[0] == "Error: RuntimeError: boom: test" and sent[1].startswith("Error: ")


def test_max_turns_raises_with_the_transcript() -> None:
    llm = ScriptedProvider([calls(("population", '{"city": "Paris"}'))] * 2)
    with pytest.raises(MaxTurnsExceededError) as info:
        llm.run_tools("Loop.", tools=[population], max_turns=2)
    run = info.value.result
    assert run.turns == 2 and len(run.tool_results) == 1
    assert run.messages[-1].tool_calls and run.messages[-1].role == "assistant"


def test_async_loop_runs_a_turns_calls_concurrently() -> None:
    started: list[float] = []
    lock = threading.Lock()

    @tool
    def slow(n: int) -> int:
        """Sleeps a little."""
        with lock:
            started.append(time.perf_counter())
        time.sleep(0.3)
        return n

    @tool
    async def fast(n: int) -> int:
        """Async."""
        await asyncio.sleep(0)
        return n * 10

    llm = ScriptedProvider(
        [calls(("slow", '{"n": 1}'), ("slow", '{"n": 2}'), ("fast", '{"n": 3}')), text("done")]
    )
    run = asyncio.run(llm.arun_tools("Go.", tools=[slow, fast]))
    assert [r.output for r in run.tool_results] == [1, 2, 30]
    assert abs(started[0] - started[1]) < 0.25  # both sync tools ran at once, on threads


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tools": []}, "tools"),
        ({"tools": [City]}, "tools[0]"),
        ({"tools": [population], "max_turns": 0}, "max_turns"),
    ],
)
def test_tool_loop_bad_input(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        ScriptedProvider([]).run_tools("x", **kwargs)
    assert info.value.field == field
