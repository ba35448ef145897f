"""Tools and expected wire shapes shared by the tool tests of the HTTP providers."""

from __future__ import annotations

from typing import Any

from abstractcore import Tool, ToolCall, tool

PREFACE = {"anthropic": "Let me check."}
"""What the fake model writes before its calls (only the Anthropic one writes anything)."""


@tool
def get_weather(city: str) -> str:
    """The weather in a city.

    Args:
        city: the city's name
    """
    return f"sunny in {city}"


@tool
def get_time(zone: str) -> str:
    """The time in a time zone."""
    return f"noon in {zone}"


def offered(kind: str, t: Tool) -> dict[str, Any]:
    """A tool as the request body of ``kind`` carries it."""
    if kind == "anthropic":
        return {"name": t.name, "description": t.description, "input_schema": t.parameters}
    function = {"name": t.name, "description": t.description, "parameters": t.parameters}
    return {"type": "function", "function": function}


def replayed(kind: str, content: str, calls: list[ToolCall], results: list[str]) -> list[Any]:
    """The assistant turn that made ``calls`` and the turn(s) of their results, as sent."""
    if kind == "openai":
        return [
            {
                "role": "assistant",
                "content": content or None,
                "tool_calls": [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.raw_arguments},
                    }
                    for c in calls
                ],
            },
            *({"role": "tool", "tool_call_id": c.id, "content": r} for c, r in zip(calls, results)),
        ]
    if kind == "anthropic":
        text = [{"type": "text", "text": content}] if content else []
        uses = [
            {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in calls
        ]
        blocks = [
            {"type": "tool_result", "tool_use_id": c.id, "content": r}
            for c, r in zip(calls, results)
        ]
        return [{"role": "assistant", "content": text + uses}, {"role": "user", "content": blocks}]
    return [
        {
            "role": "assistant",
            "content": content,
            "tool_calls": [{"function": {"name": c.name, "arguments": c.arguments}} for c in calls],
        },
        *({"role": "tool", "content": r, "tool_name": c.name} for c, r in zip(calls, results)),
    ]
