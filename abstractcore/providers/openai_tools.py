"""Chat Completions mapping of tools, structured output and logprobs (pure: no I/O).

Kept apart from :mod:`.openai` so the wire class reads as the request/response skeleton; these
are the fields of the documented format that carry tool calls, ``response_format`` and
``logprobs`` in both directions. Validation of what the model wrote happens later, for every
provider alike, in :mod:`._outputs`: here a tool call's ``raw_arguments`` is the model's text.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from ..request import GenerationRequest
from ..structured import ResponseFormat, strict_schema
from ..tools.definition import Tool
from ..types import Message, TokenLogprob, ToolCall, ToolCallDelta

__all__ = [
    "ToolDeltaReader",
    "logprobs_of",
    "message_json",
    "new_call_id",
    "request_fields",
    "response_format_json",
    "tool_calls_of",
]

_CHOICES = ("auto", "none", "required")


def new_call_id() -> str:
    """An id for a call the server sent without one (some compatible servers do)."""
    return f"call_{uuid.uuid4().hex}"


# ---------------------------------------------------------------------- request
def request_fields(request: GenerationRequest) -> dict[str, Any]:
    """``tools``, ``tool_choice``, ``parallel_tool_calls``, ``response_format``, ``logprobs``
    and ``top_logprobs`` for the body; only the ones the request sets."""
    out: dict[str, Any] = {}
    # The API refuses tool_choice and parallel_tool_calls without tools; with none offered
    # ("auto"/"none" are all a caller may give then) they mean nothing anyway.
    if request.tools:
        out["tools"] = [_tool_json(t) for t in request.tools]
        choice = request.tool_choice
        if choice is not None:
            out["tool_choice"] = (
                choice if choice in _CHOICES else {"type": "function", "function": {"name": choice}}
            )
        if request.parallel_tool_calls is not None:
            out["parallel_tool_calls"] = request.parallel_tool_calls
    if request.response_format is not None:
        out["response_format"] = response_format_json(request.response_format)
    if request.logprobs:
        out["logprobs"] = True
        out["top_logprobs"] = request.top_logprobs or 0
    return out


def _tool_json(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = tool.parameters
    if tool.strict:
        # Strict mode needs every object closed and every property required; a schema that
        # cannot say that goes non-strict (its arguments are still validated on return).
        closed = strict_schema(tool.parameters)
        if closed is not None:
            function["parameters"] = closed
            function["strict"] = True
    return {"type": "function", "function": function}


def response_format_json(fmt: ResponseFormat) -> dict[str, Any]:
    """``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema": {...}}``; a
    strict request sends the schema in strict form, or non-strict when it has none."""
    if fmt.kind == "json_object":
        return {"type": "json_object"}
    schema = fmt.json_schema if fmt.json_schema is not None else {"type": "object"}
    closed = strict_schema(schema) if fmt.strict else None
    spec: dict[str, Any] = {
        "name": fmt.name,
        "schema": closed if closed is not None else schema,
        "strict": closed is not None,
    }
    if fmt.description:
        spec["description"] = fmt.description
    return {"type": "json_schema", "json_schema": spec}


def message_json(m: Message) -> dict[str, Any]:
    """One message; an assistant turn's calls go back with the model's own argument text."""
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content}
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.name is not None:
        out["name"] = m.name
    if m.tool_calls:
        out["content"] = m.content or None  # the API's shape for a turn that only calls tools
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {
                    "name": c.name,
                    "arguments": c.raw_arguments or json.dumps(c.arguments),
                },
            }
            for c in m.tool_calls
        ]
    return out


# ---------------------------------------------------------------------- response
def tool_calls_of(raw: Any) -> list[ToolCall]:
    """``message.tool_calls`` as ToolCall (arguments not validated yet)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise TypeError("message.tool_calls is not a list")
    out: list[ToolCall] = []
    for item in raw:
        function = item["function"]
        name = function["name"]
        if not isinstance(name, str):
            raise TypeError("tool_calls[].function.name is not a string")
        out.append(
            ToolCall.model_validate(
                {
                    "id": item.get("id") or new_call_id(),
                    "name": name,
                    "arguments": _arguments_text(function.get("arguments")),
                }
            )
        )
    return out


def _arguments_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):  # a compatible server that already parsed them
        return json.dumps(value)
    if not isinstance(value, str):
        raise TypeError("tool_calls[].function.arguments is not a string")
    return value


class ToolDeltaReader:
    """``delta.tool_calls`` of one stream as ToolCallDelta; a call whose first delta has no
    id gets one, so the assembler never waits for an id that will not come."""

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def read(self, raw: Any) -> list[ToolCallDelta]:
        """The deltas of one chunk."""
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise TypeError("delta.tool_calls is not a list")
        out: list[ToolCallDelta] = []
        for position, item in enumerate(raw):
            index = item.get("index", position)
            if isinstance(index, bool) or not isinstance(index, int):
                raise TypeError("delta.tool_calls[].index is not an integer")
            function = item.get("function") or {}
            call_id = item.get("id")
            if index not in self._seen:
                self._seen.add(index)
                call_id = call_id or new_call_id()
            out.append(
                ToolCallDelta(
                    index=index,
                    id=call_id,
                    name=function.get("name"),
                    arguments=_arguments_text(function.get("arguments")),
                )
            )
        return out


def logprobs_of(raw: Any) -> list[TokenLogprob] | None:
    """``choice.logprobs.content`` (``[{token, logprob, bytes, top_logprobs}]``) or None."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise TypeError("choice.logprobs is not an object")
    content = raw.get("content")
    if content is None:  # a refusal carries its logprobs under "refusal"
        return None
    if not isinstance(content, list):
        raise TypeError("logprobs.content is not a list")
    return [TokenLogprob.model_validate(entry) for entry in content]
