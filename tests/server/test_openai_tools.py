"""Tools, structured output and logprobs through /v1/chat/completions, over the scripted
provider on real loopback HTTP: what reaches the provider, and the OpenAI shapes back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from abstractcore.providers.base import Features
from abstractcore.server import create_app

from .conftest import API_KEY, ScriptedProvider, ThreadServer

AUTH = {"Authorization": f"Bearer {API_KEY}"}
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
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
PERSON = {
    "type": "json_schema",
    "json_schema": {
        "name": "person",
        "schema": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
        },
    },
}


def body(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "scripted-1", "messages": [{"role": "user", "content": content}], **extra}


def chat(server: ThreadServer, payload: dict[str, Any]) -> httpx.Response:
    return server.client.post("/v1/chat/completions", json=payload, headers=AUTH)


def stream_chunks(server: ThreadServer, payload: dict[str, Any]) -> list[dict[str, Any]]:
    with server.client.stream(
        "POST", "/v1/chat/completions", json={**payload, "stream": True}, headers=AUTH
    ) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def joined_calls(chunks: list[dict[str, Any]]) -> dict[int, dict[str, str]]:
    """The streamed tool calls as the openai SDK accumulates them (strings concatenated)."""
    calls: dict[int, dict[str, str]] = {}
    for c in chunks:
        for d in c["choices"][0]["delta"].get("tool_calls", []) if c["choices"] else []:
            call = calls.setdefault(d["index"], {"id": "", "name": "", "arguments": ""})
            call["id"] += d.get("id", "")
            call["name"] += d.get("function", {}).get("name", "")
            call["arguments"] += d.get("function", {}).get("arguments", "")
    return calls


# ---------------------------------------------------------------------- tools
def test_tool_call_response_shape(
    scripted_server: ThreadServer, scripted: ScriptedProvider
) -> None:
    r = chat(scripted_server, body('call get_weather {"city": "Paris"}', tools=[WEATHER]))
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {
                "id": "call_0",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    assert choice["finish_reason"] == "tool_calls"
    (tool,) = scripted.requests[-1].tools
    assert tool.name == "get_weather" and tool.parameters["required"] == ["city"]
    assert tool.description == "The weather in a city."


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("required", "required"),
        ("none", "none"),
        ({"type": "function", "function": {"name": "get_time"}}, "get_time"),
    ],
)
def test_tool_choice_and_parallel_calls_reach_the_provider(
    scripted_server: ThreadServer, scripted: ScriptedProvider, given: Any, expected: str
) -> None:
    payload = body("echo hi", tools=[WEATHER, TIME], tool_choice=given, parallel_tool_calls=False)
    assert chat(scripted_server, payload).status_code == 200
    req = scripted.requests[-1]
    assert (req.tool_choice, req.parallel_tool_calls) == (expected, False)
    assert [t.name for t in req.tools] == ["get_weather", "get_time"]


def test_provider_side_tool_errors_name_the_field(scripted_server: ThreadServer) -> None:
    r = chat(scripted_server, body("echo hi", tools=[WEATHER], tool_choice={
        "type": "function", "function": {"name": "nope"}}))  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"
    assert "nope" in r.json()["error"]["message"]
    r = chat(scripted_server, body("echo hi", tool_choice="required"))
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"
    r = chat(scripted_server, body("echo hi", logprobs=False, top_logprobs=3))
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"


def test_tool_conversation_reaches_the_provider(
    scripted_server: ThreadServer, scripted: ScriptedProvider
) -> None:
    raw = '{"city":  "Paris"}'  # odd spacing: replayed byte for byte
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": raw},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "say sunny"}]},
    ]
    r = chat(scripted_server, {"model": "scripted-1", "messages": messages, "tools": [WEATHER]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "sunny"
    _, assistant, result = scripted.requests[-1].messages
    assert assistant.role == "assistant" and assistant.content == ""
    (call,) = assistant.tool_calls
    assert (call.id, call.name, call.raw_arguments, call.arguments) == (
        "c1",
        "get_weather",
        raw,
        {"city": "Paris"},
    )
    assert (result.role, result.tool_call_id, result.name, result.content) == (
        "tool",
        "c1",
        "get_weather",
        "say sunny",
    )


def test_streamed_tool_calls(scripted_server: ThreadServer) -> None:
    text = 'call get_weather {"city": "Paris"} | get_time {}'
    chunks = stream_chunks(scripted_server, body(text, tools=[WEATHER, TIME]))
    deltas = [
        d for c in chunks if c["choices"] for d in c["choices"][0]["delta"].get("tool_calls", [])
    ]
    # the provider numbers its calls 1, 2: the client sees 0, 1, each id/type/name once
    assert deltas[0] == {
        "index": 0,
        "id": "call_0",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert all("id" not in d and "name" not in d["function"] for d in deltas[1:] if d["index"] == 0)
    assert joined_calls(chunks) == {
        0: {"id": "call_0", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        1: {"id": "call_1", "name": "get_time", "arguments": "{}"},
    }
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls" and finishes.count(None) == len(finishes) - 1


def test_tool_call_given_whole_at_the_end_is_streamed(scripted_server: ThreadServer) -> None:
    chunks = stream_chunks(
        scripted_server, body('whole get_weather {"city": "Oslo"}', tools=[WEATHER])
    )
    assert joined_calls(chunks) == {
        0: {"id": "call_whole", "name": "get_weather", "arguments": '{"city": "Oslo"}'}
    }
    r = chat(scripted_server, body('whole get_weather {"city": "Oslo"}', tools=[WEATHER]))
    assert r.json()["choices"][0]["message"]["tool_calls"][0]["id"] == "call_whole"


def test_invalid_tool_arguments_come_back_as_written(scripted_server: ThreadServer) -> None:
    bad = '{"city": 5, "extra"'  # not even JSON: the library refuses it, the API returns it
    r = chat(scripted_server, body(f"call get_weather {bad}", tools=[WEATHER]))
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == bad
    assert choice["finish_reason"] == "tool_calls"
    chunks = stream_chunks(scripted_server, body(f"call get_weather {bad}", tools=[WEATHER]))
    # the last fragment rode on the chunk the check rejected: it still reaches the client
    assert joined_calls(chunks)[0]["arguments"] == bad
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"


# ---------------------------------------------------------------------- structured output
def test_json_schema_response_format(
    scripted_server: ThreadServer, scripted: ScriptedProvider
) -> None:
    answer = '{"name": "Ada", "age": 36}'
    r = chat(scripted_server, body(f"say {answer}", response_format=PERSON))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == answer
    fmt = scripted.requests[-1].response_format
    assert fmt is not None and (fmt.kind, fmt.name) == ("json_schema", "person")
    assert fmt.json_schema == PERSON["json_schema"]["schema"]  # type: ignore[index]
    chat(scripted_server, body("say {}", response_format={"type": "json_object"}))
    assert scripted.requests[-1].response_format.kind == "json_object"  # type: ignore[union-attr]
    chat(scripted_server, body("say x", response_format={"type": "text"}))
    assert scripted.requests[-1].response_format is None


def test_output_that_does_not_validate_is_returned_as_the_api_would(
    scripted_server: ThreadServer, scripted: ScriptedProvider
) -> None:
    bad = '{"name": "Ada", "age": "old"}'
    r = chat(scripted_server, body(f"say {bad}", response_format=PERSON))
    assert r.status_code == 200, r.text
    # one retry with the errors fed back; its answer (echoed, cut at the cap of 5) comes back
    assert len(scripted.requests) == 2
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == "reply does not match the"
    assert choice["finish_reason"] == "length"
    assert r.json()["usage"]["completion_tokens"] == 3 + 5  # both attempts
    chunks = stream_chunks(scripted_server, body(f"say {bad}", response_format=PERSON))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == bad  # the last piece rode on the rejected final chunk
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"


# ---------------------------------------------------------------------- logprobs
def test_logprobs_in_openai_shape(
    scripted_server: ThreadServer, scripted: ScriptedProvider
) -> None:
    r = chat(scripted_server, body("say abcdef", logprobs=True, top_logprobs=2))
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in content] == ["ab", "cd", "ef"]
    assert content[0] == {
        "token": "ab",
        "logprob": -0.25,
        "bytes": [97, 98],
        "top_logprobs": [
            {"token": "ab~0", "logprob": -1.0, "bytes": None},
            {"token": "ab~1", "logprob": -2.0, "bytes": None},
        ],
    }
    assert (scripted.requests[-1].logprobs, scripted.requests[-1].top_logprobs) == (True, 2)
    chunks = stream_chunks(scripted_server, body("say abcdef", logprobs=True))
    per_chunk = [
        [t["token"] for t in c["choices"][0]["logprobs"]["content"]]
        for c in chunks
        if c["choices"] and c["choices"][0]["logprobs"]
    ]
    assert per_chunk == [["ab"], ["cd"], ["ef"]]
    plain = chat(scripted_server, body("say abc"))
    assert plain.json()["choices"][0]["logprobs"] is None


# ---------------------------------------------------------------------- unsupported features
class PlainProvider(ScriptedProvider):
    """A backend with plain text only."""

    features = Features()


@pytest.fixture(scope="module")
def plain_server() -> Iterator[ThreadServer]:
    server = ThreadServer(create_app(PlainProvider())).start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [WEATHER]}, "tools"),
        ({"response_format": PERSON}, "response_format"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
    ],
)
def test_unsupported_features_are_400_naming_the_field(
    plain_server: ThreadServer, extra: dict[str, Any], param: str
) -> None:
    r = plain_server.client.post("/v1/chat/completions", json=body("echo hi", **extra))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and "not supported" in r.json()["error"]["message"]
    r = plain_server.client.post("/v1/chat/completions", json=body("echo hi", stream=True, **extra))
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_neutral_values_need_no_feature(plain_server: ThreadServer) -> None:
    neutral = body(
        "echo fine", tools=[], tool_choice="none", parallel_tool_calls=True, logprobs=False,
        top_logprobs=0, response_format={"type": "text"},
    )  # fmt: skip
    r = plain_server.client.post("/v1/chat/completions", json=neutral)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "fine"


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 1}}}]},
            "tools[0].function.parameters",
        ),
        ({"tools": [{"type": "custom", "custom": {}}]}, "tools[0].type"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {}}}, "tool_choice.function.name"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": []},
                }
            },
            "response_format.json_schema.schema",
        ),
        ({"logprobs": 1}, "logprobs"),
        ({"top_logprobs": 21}, "top_logprobs"),
    ],
)
def test_new_fields_are_validated_naming_the_field(
    scripted_server: ThreadServer, scripted: ScriptedProvider, extra: dict[str, Any], param: str
) -> None:
    r = chat(scripted_server, body("echo hi", **extra))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert scripted.requests == []


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "assistant", "content": None}], "messages[0].content"),
        (
            [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}],
            "messages[0].tool_calls[0].function",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "tool", "content": "r", "tool_call_id": "x"},
            ],
            "messages[1].tool_call_id",
        ),
        ([{"role": "tool", "content": "r"}], "messages[0].tool_call_id"),
        ([{"role": "assistant", "content": "a", "refusal": "no"}], "messages[0].refusal"),
    ],
)
def test_tool_messages_are_validated_naming_the_field(
    scripted_server: ThreadServer, messages: list[dict[str, Any]], param: str
) -> None:
    r = chat(scripted_server, {"model": "scripted-1", "messages": messages})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
