"""Example request bodies of the OpenAPI document: shown at ``/docs``, and replayed by
schema-driven testers (schemathesis) before they generate bodies of their own. ``model`` is
:data:`EXAMPLE_MODEL`, which the served document replaces with the served id."""

from __future__ import annotations

from typing import Any

__all__ = ["CHAT_EXAMPLES", "COMPLETION_EXAMPLES", "EXAMPLE_MODEL", "MESSAGES_EXAMPLES"]

#: The ``model`` of the examples until the served model is known.
EXAMPLE_MODEL = "served-model-id"
_WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
_ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def _example(summary: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"summary": summary, "value": {"model": EXAMPLE_MODEL, **value}}


CHAT_EXAMPLES = {
    "text": _example(
        "A question",
        {
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "What is the capital of France?"},
            ],
            "max_completion_tokens": 32,
        },
    ),
    "stream": _example(
        "Streamed, with usage",
        {
            "messages": [{"role": "user", "content": "Count to five."}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    "tools": _example(
        "A function tool",
        {"messages": _ASK, "tools": [{"type": "function", "function": _WEATHER}]},
    ),
    "tools_stream": _example(
        "A function tool, streamed",
        {
            "messages": _ASK,
            "tools": [{"type": "function", "function": _WEATHER}],
            "tool_choice": "required",
            "stream": True,
        },
    ),
    "tool_result": _example(
        "A tool's result sent back",
        {
            "messages": [
                *_ASK,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
            ],
            "tools": [{"type": "function", "function": _WEATHER}],
        },
    ),
    "json_schema": _example(
        "Structured output",
        {
            "messages": [{"role": "user", "content": "Invent a person."}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "person",
                    "strict": True,
                    "schema": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                        "required": ["name", "age"],
                        "additionalProperties": False,
                    },
                },
            },
        },
    ),
    "logprobs": _example(
        "Log-probabilities, streamed",
        {
            "messages": [{"role": "user", "content": "Say yes."}],
            "logprobs": True,
            "top_logprobs": 2,
            "stream": True,
        },
    ),
}

COMPLETION_EXAMPLES = {
    "text": _example("A prompt", {"prompt": "Once upon a time", "max_tokens": 16}),
    "stream": _example("Streamed", {"prompt": "Once upon a time", "stream": True}),
}

_ANTHROPIC_WEATHER = {
    "name": "get_weather",
    "description": _WEATHER["description"],
    "input_schema": _WEATHER["parameters"],
}
MESSAGES_EXAMPLES = {
    "text": _example(
        "A question",
        {
            "max_tokens": 64,
            "system": "Answer briefly.",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
        },
    ),
    "stream": _example(
        "Streamed",
        {"max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "Hi"}]},
    ),
    "tools": _example(
        "A client tool",
        {"max_tokens": 256, "messages": _ASK, "tools": [_ANTHROPIC_WEATHER]},
    ),
    "tools_stream": _example(
        "A client tool, streamed",
        {
            "max_tokens": 256,
            "messages": _ASK,
            "tools": [_ANTHROPIC_WEATHER],
            "tool_choice": {"type": "any"},
            "stream": True,
        },
    ),
    "tool_result": _example(
        "A tool's result sent back",
        {
            "max_tokens": 256,
            "tools": [_ANTHROPIC_WEATHER],
            "messages": [
                *_ASK,
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        }
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C, sunny"}
                    ],
                },
            ],
        },
    ),
}
