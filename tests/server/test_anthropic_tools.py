"""Tool use and structured output through /v1/messages, over the scripted provider on real
loopback HTTP: content blocks to abstractcore messages, and the Anthropic shapes back."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from abstractcore.server.anthropic_api import rename_field

from .conftest import API_KEY, ScriptedProvider, ThreadServer

HEADERS = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
TIME = {"name": "get_time", "input_schema": {"type": "object"}, "cache_control": {"type": "x"}}


def body(content: Any, **extra: Any) -> dict[str, Any]:
    return {
        "model": "scripted-1",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


def post(server: ThreadServer, payload: dict[str, Any]) -> httpx.Response:
    return server.client.post("/v1/messages", json=payload, headers=HEADERS)


def events(server: ThreadServer, payload: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    with server.client.stream(
        "POST", "/v1/messages", json={**payload, "stream": True}, headers=HEADERS
    ) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    out = []
    for name, data in zip(lines[::2], lines[1::2]):
        assert name.startswith("event: ") and data.startswith("data: ")
        out.append((name[7:], json.loads(data[6:])))
    return out


def test_tool_use_response(scripted_server: ThreadServer, scripted: ScriptedProvider) -> None:
    r = post(scripted_server, body('call get_weather {"city": "Paris"}', tools=[WEATHER, TIME]))
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["content"] == [
        {"type": "tool_use", "id": "call_0", "name": "get_weather", "input": {"city": "Paris"}}
    ]
    assert data["stop_reason"] == "tool_use"
    assert [(t.name, t.description) for t in scripted.requests[-1].tools] == [
        ("get_weather", "The weather in a city."),
        ("get_time", ""),
    ]


@pytest.mark.parametrize(
    ("choice", "expected", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
        (
            {"type": "tool", "name": "get_time", "disable_parallel_tool_use": False},
            "get_time",
            True,
        ),
        ({"type": "none"}, "none", None),
    ],
)
def test_tool_choice_reaches_the_provider(
    scripted_server: ThreadServer,
    scripted: ScriptedProvider,
    choice: dict[str, Any],
    expected: str,
    parallel: bool | None,
) -> None:
    r = post(scripted_server, body("echo hi", tools=[WEATHER, TIME], tool_choice=choice))
    assert r.status_code == 200, r.text
    req = scripted.requests[-1]
    assert (req.tool_choice, req.parallel_tool_calls) == (expected, parallel)


def test_tool_conversation_reaches_the_provider(
    scripted_server: ThreadServer, scripted: ScriptedProvider
) -> None:
    messages = [
        {"role": "user", "content": "weather in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "t2", "name": "get_weather", "input": {"city": "Oslo"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "t2",
                    "content": [{"type": "text", "text": "no such city"}],
                    "is_error": True,
                },
                {"type": "text", "text": "say thanks"},
            ],
        },
    ]
    payload = {"model": "scripted-1", "max_tokens": 9, "messages": messages, "tools": [WEATHER]}
    r = post(scripted_server, {**payload, "system": "be brief"})
    assert r.status_code == 200 and r.json()["content"][0]["text"] == "thanks"
    got = [
        (m.role, m.content, m.tool_call_id, [c.raw_arguments for c in m.tool_calls])
        for m in scripted.requests[-1].messages
    ]
    assert got == [
        ("system", "be brief", None, []),
        ("user", "weather in Paris and Oslo?", None, []),
        ("assistant", "Let me look.", None, ['{"city": "Paris"}', '{"city": "Oslo"}']),
        ("tool", "sunny", "t1", []),
        ("tool", "Error: no such city", "t2", []),
        ("user", "say thanks", None, []),
    ]
    assert scripted.requests[-1].messages[4].name == "get_weather"


def test_streamed_tool_use(scripted_server: ThreadServer) -> None:
    text = 'call get_weather {"city": "Paris"} | get_time {}'
    evs = events(scripted_server, body(text, tools=[WEATHER, TIME]))
    names = [n for n, _ in evs]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == [
        "message_delta",
        "message_stop",
    ]
    starts = [d for n, d in evs if n == "content_block_start"]
    assert [(s["index"], s["content_block"]) for s in starts] == [
        (0, {"type": "tool_use", "id": "call_0", "name": "get_weather", "input": {}}),
        (1, {"type": "tool_use", "id": "call_1", "name": "get_time", "input": {}}),
    ]
    partial: dict[int, str] = {}
    for n, d in evs:
        if n == "content_block_delta":
            assert d["delta"]["type"] == "input_json_delta"
            partial[d["index"]] = partial.get(d["index"], "") + d["delta"]["partial_json"]
    assert partial == {0: '{"city": "Paris"}', 1: "{}"}
    assert [d["index"] for n, d in evs if n == "content_block_stop"] == [0, 1]
    assert evs[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_streamed_text_then_whole_tool_call(scripted_server: ThreadServer) -> None:
    evs = events(scripted_server, body('whole get_weather {"city": "Oslo"}', tools=[WEATHER]))
    starts = [d["content_block"] for n, d in evs if n == "content_block_start"]
    assert starts == [{"type": "tool_use", "id": "call_whole", "name": "get_weather", "input": {}}]
    deltas = [d["delta"]["partial_json"] for n, d in evs if n == "content_block_delta"]
    assert deltas == ['{"city": "Oslo"}']
    # a request with tools that only gets text: one text block, opened at the first text
    evs = events(scripted_server, body("say hello", tools=[WEATHER]))
    assert [n for n, _ in evs if n.startswith("content_block")] == [
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
    ]
    assert evs[-2][1]["delta"]["stop_reason"] == "end_turn"


def test_invalid_tool_input_is_returned_as_written(scripted_server: ThreadServer) -> None:
    r = post(scripted_server, body('call get_weather {"city": 5}', tools=[WEATHER]))
    assert r.status_code == 200, r.text
    assert r.json()["content"][0]["input"] == {"city": 5}
    assert r.json()["stop_reason"] == "tool_use"
    evs = events(scripted_server, body('call get_weather {"city": 5}', tools=[WEATHER]))
    partial = "".join(d["delta"]["partial_json"] for n, d in evs if n == "content_block_delta")
    assert partial == '{"city": 5}' and evs[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_output_config_format(scripted_server: ThreadServer, scripted: ScriptedProvider) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    config = {"format": {"type": "json_schema", "schema": schema}}
    r = post(scripted_server, body('say {"n": 1}', output_config=config))
    assert r.status_code == 200 and r.json()["content"][0]["text"] == '{"n": 1}'
    fmt = scripted.requests[-1].response_format
    assert fmt is not None and fmt.kind == "json_schema" and fmt.json_schema == schema
    evs = events(scripted_server, body('say {"n": "x"}', output_config=config))
    text = "".join(d["delta"]["text"] for n, d in evs if n == "content_block_delta")
    assert text == '{"n": "x"}' and evs[-2][1]["delta"]["stop_reason"] == "end_turn"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"tools": [{"name": "t", "input_schema": {"type": "string"}}]}, "tools.0.input_schema"),
        ({"tools": [{"type": "web_search_20250305", "name": "web"}]}, "tools.0.type"),
        ({"tools": [WEATHER, WEATHER]}, "tools.1.name"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice"),
        ({"output_config": {"format": {"type": "json_schema"}}}, "output_config.format.schema"),
        ({"output_config": {"effort": "high"}}, "output_config.effort"),
    ],
)
def test_tool_fields_are_validated(
    scripted_server: ThreadServer, extra: dict[str, Any], field: str
) -> None:
    r = post(scripted_server, body("echo hi", **extra))
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
    assert field in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        (
            [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x"}]}],
            "messages.0.content.0.tool_use_id",
        ),
        (
            [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "x"}]}],
            "messages.0.content.0.type",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "tool_use", "id": "x", "name": "f", "input": {}}],
                }
            ],
            "messages.0.content.0.type",
        ),
        (
            [{"role": "assistant", "content": [{"type": "tool_use", "id": "x", "name": "f"}]}],
            "messages.0.content.0.input",
        ),
    ],
)
def test_tool_blocks_are_validated(
    scripted_server: ThreadServer, messages: list[dict[str, Any]], field: str
) -> None:
    r = post(scripted_server, {"model": "scripted-1", "max_tokens": 3, "messages": messages})
    assert r.status_code == 400, r.text
    assert field in r.json()["error"]["message"]


def test_provider_fields_are_renamed_to_the_clients_words() -> None:
    assert rename_field("max_output_tokens") == "max_tokens"
    assert rename_field("stop[2]") == "stop_sequences.2"
    assert rename_field("tools[0].parameters") == "tools.0.input_schema"
    assert rename_field("tools[3].name") == "tools.3.name"
    assert rename_field("parallel_tool_calls") == "tool_choice.disable_parallel_tool_use"
    assert rename_field("response_format.json_schema.schema") == "output_config.format.schema"
    assert rename_field("messages[4].content") == "messages"
