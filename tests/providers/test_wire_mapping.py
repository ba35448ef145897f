"""Wire shapes the fakes do not send: what compatible servers and rarer API events look like,
fed straight to each (pure) wire format."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from abstractcore.providers._http import WireEvent
from abstractcore.providers.anthropic import AnthropicWire
from abstractcore.providers.ollama import OllamaWire
from abstractcore.providers.openai import OpenAIWire
from abstractcore.request import GenerationRequest
from abstractcore.structured import ResponseFormat
from abstractcore.tools import ToolCallAssembler
from abstractcore.types import Message, StreamChunk

# What the wire maps an answer to: a plain request unless a test says otherwise.
REQUEST = GenerationRequest(messages=[Message(role="user", content="x")])

_MADE_UP_ID = re.compile(r"call_[0-9a-f]{32}")


def _sse(payload: Any, name: str | None = None) -> WireEvent:
    return WireEvent(name, payload if isinstance(payload, str) else json.dumps(payload))


def _feed(parser: Any, events: list[WireEvent]) -> list[StreamChunk]:
    return [chunk for event in events for chunk in parser.feed(event)]


def _assembled(chunks: list[StreamChunk]) -> list[Any]:
    assembler = ToolCallAssembler()
    for c in chunks:
        assembler.add(c.tool_call_deltas)
    return assembler.calls()


def test_openai_compatible_server_without_ids_and_with_object_arguments() -> None:
    wire = OpenAIWire("m", "openai-compatible", None)
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}],
    }
    payload = {"choices": [{"message": message, "finish_reason": "tool_calls"}]}
    (call,) = wire.parse_response(payload, REQUEST).tool_calls
    assert _MADE_UP_ID.fullmatch(call.id)
    assert (call.arguments, call.raw_arguments) == ({"a": 1}, '{"a": 1}')


def test_openai_stream_without_ids_gets_one_id_per_call() -> None:
    parser = OpenAIWire("m", "openai-compatible", None).stream_parser(REQUEST)

    def delta(index: int, **function: str) -> WireEvent:
        call = {"index": index, "function": function}
        return _sse({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})

    chunks = _feed(
        parser,
        [
            delta(0, name="f", arguments='{"a"'),
            delta(0, arguments=": 1}"),
            delta(1, name="g", arguments="{}"),
            _sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            _sse("[DONE]"),
        ],
    )
    calls = _assembled(chunks)
    assert [(c.name, c.arguments) for c in calls] == [("f", {"a": 1}), ("g", {})]
    assert all(_MADE_UP_ID.fullmatch(c.id) for c in calls) and calls[0].id != calls[1].id
    assert chunks[-1].finish_reason == "tool_calls"


def test_openai_rejects_tool_calls_of_the_wrong_shape() -> None:
    # The HTTP shell turns these into ProviderAPIError ("malformed response body").
    wire = OpenAIWire("m", "openai", "k")
    message = {"role": "assistant", "content": None, "tool_calls": "f(1)"}
    with pytest.raises(TypeError):
        wire.parse_response(
            {"choices": [{"message": message, "finish_reason": "tool_calls"}]}, REQUEST
        )
    bad_args = [{"id": "c", "function": {"name": "f", "arguments": 7}}]
    with pytest.raises(TypeError):
        wire.parse_response(
            {"choices": [{"message": {**message, "tool_calls": bad_args}}]}, REQUEST
        )


def _anthropic_tool_stream(*deltas: str) -> list[WireEvent]:
    block = {"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}}
    events = [
        _sse({"type": "message_start", "message": {"model": "m", "usage": {}}}, "message_start"),
        _sse({"type": "content_block_start", "index": 0, "content_block": block}),
    ]
    for d in deltas:
        delta = {"type": "input_json_delta", "partial_json": d}
        events.append(_sse({"type": "content_block_delta", "index": 0, "delta": delta}))
    events += [
        _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        _sse({"type": "message_delta", "delta": {"stop_reason": "tool_use"}}, "message_delta"),
        _sse({"type": "message_stop"}, "message_stop"),
    ]
    return events


@pytest.mark.parametrize("deltas", [(), ("",)])
def test_anthropic_tool_without_input_streams_an_empty_object(deltas: tuple[str, ...]) -> None:
    chunks = _feed(
        AnthropicWire("m", "anthropic", "k").stream_parser(REQUEST), _anthropic_tool_stream(*deltas)
    )
    (call,) = _assembled(chunks)
    # The same as the non-streamed block {"input": {}} gives.
    assert (call.id, call.name, call.arguments, call.raw_arguments) == ("toolu_1", "now", {}, "{}")
    assert chunks[-1].finish_reason == "tool_calls"


def test_anthropic_forced_tool_stream_keeps_only_the_tool_input() -> None:
    fmt = ResponseFormat(kind="json_object", name="now")
    events = _anthropic_tool_stream('{"a": ', "1}")
    text = {"type": "content_block_delta", "index": 5, "delta": {"type": "text_delta", "text": "x"}}
    events.insert(2, _sse(text, "content_block_delta"))  # a text block is not the answer
    request = REQUEST.model_copy(update={"response_format": fmt})
    chunks = _feed(AnthropicWire("m", "anthropic", "k").stream_parser(request), events)
    assert [c.content for c in chunks] == ['{"a": ', "1}", ""]
    assert all(not c.tool_call_deltas for c in chunks)
    assert chunks[-1].finish_reason == "stop"


def test_ollama_keeps_ids_it_is_given_and_reads_string_arguments() -> None:
    calls = [
        {"id": "call_abc", "function": {"name": "f", "arguments": {"x": "é"}}},
        {"function": {"name": "g", "arguments": '{"y": 2}'}},
    ]
    payload = {
        "message": {"role": "assistant", "content": "", "tool_calls": calls},
        "done": True,
        "done_reason": "stop",
    }
    response = OllamaWire("m", "ollama").parse_response(payload, REQUEST)
    first, second = response.tool_calls
    assert (first.id, first.arguments, first.raw_arguments) == (
        "call_abc",
        {"x": "é"},
        '{"x": "\\u00e9"}',
    )
    assert _MADE_UP_ID.fullmatch(second.id) and second.arguments == {"y": 2}
    assert response.finish_reason == "tool_calls"
