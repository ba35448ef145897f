"""The official openai and anthropic SDKs against the server fronting HTTP providers whose
backends are the loopback fakes of tests/providers/servers: tool calls (whole and streamed),
structured output through ``parse()``, logprobs, Anthropic tool use.

The fake model is deterministic (see ``servers.model``): offered tools and a user turn last,
it calls the first tool once per ``" and "``-separated part of the first user message, with
arguments made from the tool's schema and the part's last word; tool results last, it
answers ``"Result: <results joined by ' | '>"``; asked for a schema, it writes JSON made from
the schema and the first user message's last word. The model name's prefix is the scenario
(``bad-always``: the model's JSON is wrong-typed on every attempt).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pydantic
import pytest

from abstractcore import BaseProvider, create_llm
from abstractcore.server import create_app

from .conftest import ThreadServer, wait_until

# The fakes are the provider tests' package, imported the way those tests import it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "providers"))
from servers import FakeAPI, LoopbackServer  # noqa: E402

_PATHS = {"openai-compatible": "/openai/v1", "anthropic": "/anthropic", "ollama": "/ollama"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ANTHROPIC_WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": WEATHER["function"]["parameters"],  # type: ignore[index]
}
ASK = "weather in Paris and Oslo"


class Person(pydantic.BaseModel):
    name: str
    age: int


@pytest.fixture(scope="module")
def fake() -> Iterator[LoopbackServer]:
    server = LoopbackServer(FakeAPI())
    server.start()
    yield server
    server.stop()


Front = Callable[..., ThreadServer]


@pytest.fixture
def front(fake: LoopbackServer) -> Iterator[Front]:
    """``front(kind, scenario="ok")``: the server over a ``kind`` provider on the fake."""
    started: list[ThreadServer] = []

    def make(kind: str, scenario: str = "ok") -> ThreadServer:
        model = f"{scenario}~{uuid.uuid4().hex[:10]}"

        def upstream() -> BaseProvider:
            return create_llm(
                kind, model=model, base_url=fake.url + _PATHS[kind], api_key="test-key",
                max_retries=0,
            )  # fmt: skip

        server = ThreadServer(create_app(upstream)).start()
        started.append(server)
        wait_until(lambda: server.client.get("/health").status_code == 200, timeout=10, what="up")
        server.model = model  # type: ignore[attr-defined]
        return server

    yield make
    for server in started:
        server.stop()


def oai(server: ThreadServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def claude(server: ThreadServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)


def model_of(server: ThreadServer) -> str:
    name: str = server.model  # type: ignore[attr-defined]
    return name


# ---------------------------------------------------------------------- openai SDK
@pytest.mark.parametrize("upstream", ["openai-compatible", "anthropic"])
def test_openai_tool_calls_and_results(front: Front, upstream: str) -> None:
    server = front(upstream)
    model = model_of(server)
    messages: list[Any] = [{"role": "user", "content": ASK}]
    with oai(server) as client:
        r = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls"
        # Anthropic's model writes a preface before unforced calls; OpenAI's writes nothing
        assert choice.message.content == ("Let me check." if upstream == "anthropic" else None)
        calls = choice.message.tool_calls or []
        assert [(c.function.name, c.function.arguments) for c in calls] == [
            ("get_weather", '{"city": "Paris"}'),
            ("get_weather", '{"city": "Oslo"}'),
        ]
        messages.append(choice.message.model_dump(exclude_none=True))
        messages += [
            {"role": "tool", "tool_call_id": c.id, "content": sky}
            for c, sky in zip(calls, ["sunny", "rainy"])
        ]
        final = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    assert final.choices[0].message.content == "Result: sunny | rainy"
    assert final.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("upstream", ["openai-compatible", "anthropic"])
def test_openai_streamed_tool_calls(front: Front, upstream: str) -> None:
    server = front(upstream)
    with (
        oai(server) as client,
        client.chat.completions.stream(
            model=model_of(server),
            messages=[{"role": "user", "content": ASK}],
            tools=[WEATHER],
            parallel_tool_calls=True,
        ) as stream,
    ):
        kinds = {type(event).__name__ for event in stream}
        final = stream.get_final_completion()
    assert "FunctionToolCallArgumentsDeltaEvent" in kinds
    calls = final.choices[0].message.tool_calls or []
    assert [c.function.arguments for c in calls] == ['{"city": "Paris"}', '{"city": "Oslo"}']
    assert final.choices[0].finish_reason == "tool_calls"
    assert len({c.id for c in calls}) == 2


def test_openai_parallel_calls_off_and_named_choice(front: Front) -> None:
    server = front("openai-compatible")
    with oai(server) as client:
        r = client.chat.completions.create(
            model=model_of(server),
            messages=[{"role": "user", "content": ASK}],
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            parallel_tool_calls=False,
        )
    calls = r.choices[0].message.tool_calls or []
    assert [c.function.arguments for c in calls] == ['{"city": "Oslo"}']


@pytest.mark.parametrize("upstream", ["openai-compatible", "anthropic", "ollama"])
def test_openai_parse_structured_output(front: Front, upstream: str) -> None:
    server = front(upstream)
    with oai(server) as client:
        r = client.chat.completions.parse(
            model=model_of(server),
            messages=[{"role": "user", "content": "invent a person called Ada"}],
            response_format=Person,
        )
    assert r.choices[0].message.parsed == Person(name="Ada", age=3)


def test_openai_parse_of_output_that_does_not_validate(front: Front) -> None:
    server = front("openai-compatible", scenario="bad-always")
    with oai(server) as client, pytest.raises(pydantic.ValidationError):
        # the server answers the model's (wrong-typed) JSON; the SDK's own check refuses it
        client.chat.completions.parse(
            model=model_of(server),
            messages=[{"role": "user", "content": "invent a person called Ada"}],
            response_format=Person,
        )


def test_openai_logprobs(front: Front) -> None:
    server = front("openai-compatible")
    model = model_of(server)
    with oai(server) as client:
        r = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "say hi"}],
            logprobs=True,
            top_logprobs=2,
        )
        content = r.choices[0].logprobs.content  # type: ignore[union-attr]
        assert content is not None
        assert "".join(t.token for t in content) == r.choices[0].message.content
        assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
        chunks = list(
            client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "say hi"}],
                logprobs=True,
                stream=True,
            )
        )
    streamed = [
        t
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content or []
    ]
    assert [t.token for t in streamed] == [t.token for t in content]


# ---------------------------------------------------------------------- anthropic SDK
@pytest.mark.parametrize("upstream", ["anthropic", "openai-compatible"])
def test_anthropic_tool_use_and_results(front: Front, upstream: str) -> None:
    server = front(upstream)
    model = model_of(server)
    with claude(server) as client:
        msg = client.messages.create(
            model=model,
            max_tokens=100,
            messages=[{"role": "user", "content": ASK}],
            tools=[ANTHROPIC_WEATHER],  # type: ignore[list-item]
        )
        assert msg.stop_reason == "tool_use"
        uses = [b for b in msg.content if b.type == "tool_use"]
        assert [(u.name, u.input) for u in uses] == [  # type: ignore[union-attr]
            ("get_weather", {"city": "Paris"}),
            ("get_weather", {"city": "Oslo"}),
        ]
        results = [
            {"type": "tool_result", "tool_use_id": u.id, "content": sky}  # type: ignore[union-attr]
            for u, sky in zip(uses, ["sunny", "rainy"])
        ]
        final = client.messages.create(
            model=model,
            max_tokens=100,
            messages=[
                {"role": "user", "content": ASK},
                {"role": "assistant", "content": msg.content},  # type: ignore[typeddict-item]
                {"role": "user", "content": results},  # type: ignore[typeddict-item]
            ],
            tools=[ANTHROPIC_WEATHER],  # type: ignore[list-item]
        )
    assert final.content[0].text == "Result: sunny | rainy"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"


@pytest.mark.parametrize(
    ("upstream", "choice"),
    [
        ("anthropic", {"type": "any"}),
        ("anthropic", {"type": "auto"}),  # a text block first: the preface
        ("openai-compatible", {"type": "auto"}),
    ],
)
def test_anthropic_streamed_tool_use(front: Front, upstream: str, choice: dict[str, Any]) -> None:
    server = front(upstream)
    with (
        claude(server) as client,
        client.messages.stream(
            model=model_of(server),
            max_tokens=100,
            messages=[{"role": "user", "content": ASK}],
            tools=[ANTHROPIC_WEATHER],  # type: ignore[list-item]
            tool_choice=choice,  # type: ignore[arg-type]
        ) as stream,
    ):
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "input_json" in kinds and kinds[-1] == "message_stop"
    preface = upstream == "anthropic" and choice["type"] == "auto"
    assert [b.type for b in final.content] == ["text"] * preface + ["tool_use", "tool_use"]
    if preface:
        assert final.content[0].text == "Let me check."  # type: ignore[union-attr]
    uses = [b for b in final.content if b.type == "tool_use"]
    assert [u.input for u in uses] == [{"city": "Paris"}, {"city": "Oslo"}]  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"


@pytest.mark.parametrize("upstream", ["anthropic", "openai-compatible"])
def test_anthropic_parse_structured_output(front: Front, upstream: str) -> None:
    server = front(upstream)
    with claude(server) as client:
        msg = client.messages.parse(
            model=model_of(server),
            max_tokens=100,
            messages=[{"role": "user", "content": "invent a person called Ada"}],
            output_format=Person,
        )
    assert msg.parsed_output == Person(name="Ada", age=3)
