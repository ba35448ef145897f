"""Messages API mapping of tools and structured output (pure: no I/O).

- Tools go as ``[{name, description, input_schema}]``, ``tool_choice`` as ``{"type": "auto" |
  "any" | "none" | "tool"}``; ``parallel_tool_calls=False`` is ``disable_parallel_tool_use``.
- Conversation turns become content blocks: an assistant turn's calls are ``tool_use`` blocks,
  and consecutive tool results are ``tool_result`` blocks of ONE user turn (the API wants every
  result of a turn right after it, in the next message).
- The API has no JSON mode: structured output is a forced call of one tool whose
  ``input_schema`` is the requested schema. Its input is the answer, so it comes back as the
  response's ``content`` (not as a tool call), streamed as the tool's ``input_json_delta``s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..errors import UnsupportedFeatureError
from ..request import GenerationRequest
from ..structured import ResponseFormat
from ..types import FinishReason, GenerateResponse, Message, ToolCall, ToolCallDelta

__all__ = [
    "ForcedToolStream",
    "ToolBlocks",
    "answer_from_forced_tool",
    "check_request",
    "forced_finish",
    "messages_json",
    "tool_call_of",
    "tool_fields",
]

# Named so the model sees what the tool is for; the request's format name is the tool's name.
_FORCED_DESCRIPTION = "Give your answer by calling this tool: its input is the answer."


# ---------------------------------------------------------------------- request
def check_request(request: GenerationRequest, provider: str) -> None:
    """Refuse what the forced-tool mapping of structured output cannot express."""
    fmt = request.response_format
    if fmt is None:
        return
    field = "response_model" if fmt.model is not None else "response_format"
    if request.tools:
        raise UnsupportedFeatureError(
            f"structured output together with tools is not supported by the {provider} "
            "provider: the Messages API has no JSON mode, so structured output is itself a "
            "forced tool call",
            field=field,
            provider=provider,
        )
    if fmt.json_schema is not None and fmt.json_schema.get("type", "object") != "object":
        raise UnsupportedFeatureError(
            f"structured output must be a JSON object on the {provider} provider (it is the "
            "input of a forced tool call, which the API requires to be an object)",
            field=field,
            provider=provider,
        )


def tool_fields(request: GenerationRequest, provider: str) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` for the body (the forced tool for structured output)."""
    check_request(request, provider)
    fmt = request.response_format
    if fmt is not None:
        return _forced_tool(fmt)
    if not request.tools:
        return {}  # tool_choice / parallel_tool_calls without tools mean nothing
    tools = []
    for t in request.tools:
        spec: dict[str, Any] = {"name": t.name, "input_schema": t.parameters}
        if t.description:  # optional in the API; an empty one says nothing
            spec = {"name": t.name, "description": t.description, "input_schema": t.parameters}
        tools.append(spec)
    out: dict[str, Any] = {"tools": tools}
    choice = _tool_choice(request.tool_choice)
    if request.parallel_tool_calls is False and request.tool_choice != "none":
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        out["tool_choice"] = choice
    return out


def _tool_choice(choice: str | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "required":
        return {"type": "any"}
    if choice in ("auto", "none"):
        return {"type": choice}
    return {"type": "tool", "name": choice}


def _forced_tool(fmt: ResponseFormat) -> dict[str, Any]:
    schema = fmt.json_schema if fmt.json_schema is not None else {"type": "object"}
    if "type" not in schema:  # an object schema that left its type implicit
        schema = {"type": "object", **schema}
    tool = {
        "name": fmt.name,
        "description": fmt.description or _FORCED_DESCRIPTION,
        "input_schema": schema,
    }
    return {"tools": [tool], "tool_choice": {"type": "tool", "name": fmt.name}}


def messages_json(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The ``messages`` array (system turns are the top-level ``system``, not here)."""
    out: list[dict[str, Any]] = []
    results: list[dict[str, Any]] | None = None  # the blocks of the tool-result turn being built
    for m in messages:
        if m.role == "system":
            continue
        if m.role == "tool":
            block = {"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content}
            if results is None:
                results = []
                out.append({"role": "user", "content": results})
            results.append(block)
            continue
        results = None
        if m.role == "assistant" and m.tool_calls:
            # The API refuses empty text blocks: a turn that only called tools has none.
            blocks: list[dict[str, Any]] = (
                [{"type": "text", "text": m.content}] if m.content else []
            )
            blocks += [
                {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
                for c in m.tool_calls
            ]
            out.append({"role": "assistant", "content": blocks})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


# ---------------------------------------------------------------------- response
def tool_call_of(block: dict[str, Any]) -> ToolCall:
    """A ``tool_use`` block; ``raw_arguments`` is its input as JSON text."""
    arguments = block.get("input", {})
    if not isinstance(arguments, dict):
        raise TypeError("tool_use.input is not an object")
    name = block["name"]
    if not isinstance(name, str):
        raise TypeError("tool_use.name is not a string")
    return ToolCall(
        id=str(block["id"]), name=name, arguments=arguments, raw_arguments=json.dumps(arguments)
    )


class ToolBlocks:
    """The ``tool_use`` blocks of one stream: the n-th one is tool call ``n``, whatever its
    content-block index (text blocks come between and before them)."""

    def __init__(self) -> None:
        self._calls: dict[int, int] = {}  # content-block index -> call index
        self._has_input: set[int] = set()

    def start(self, payload: dict[str, Any]) -> list[ToolCallDelta]:
        """A ``content_block_start``: a tool_use block opens call n with its id and name."""
        block = payload["content_block"]
        if block.get("type") != "tool_use":
            return []
        call = len(self._calls)
        self._calls[int(payload["index"])] = call
        name = block["name"]
        if not isinstance(name, str):
            raise TypeError("tool_use.name is not a string")
        return [ToolCallDelta(index=call, id=str(block["id"]), name=name)]

    def delta(self, payload: dict[str, Any]) -> list[ToolCallDelta]:
        """An ``input_json_delta``: a fragment of the call's arguments text."""
        call = self._calls[int(payload["index"])]
        fragment = payload["delta"]["partial_json"]
        if not isinstance(fragment, str):
            raise TypeError("input_json_delta.partial_json is not a string")
        if not fragment:
            return []
        self._has_input.add(call)
        return [ToolCallDelta(index=call, arguments=fragment)]

    def stop(self, payload: dict[str, Any]) -> list[ToolCallDelta]:
        """A ``content_block_stop``: a call that streamed no input had ``{}``, as the
        non-streamed block says."""
        call = self._calls.get(int(payload["index"]))
        if call is None or call in self._has_input:
            return []
        return [ToolCallDelta(index=call, arguments="{}")]


# ---------------------------------------------------------------------- structured output
def answer_from_forced_tool(fmt: ResponseFormat, response: GenerateResponse) -> GenerateResponse:
    """The forced tool's input as the response's content (finish "stop", no tool calls)."""
    call = next((c for c in response.tool_calls if c.name == fmt.name), None)
    return response.model_copy(
        update={
            "content": call.raw_arguments if call is not None else response.content,
            "finish_reason": forced_finish(response.finish_reason),
            "tool_calls": [],
        }
    )


class ForcedToolStream:
    """One stream's forced tool: its argument fragments are the answer's text."""

    def __init__(self, fmt: ResponseFormat) -> None:
        self._name = fmt.name
        self._calls: set[int] = set()

    def text(self, deltas: Sequence[ToolCallDelta]) -> str:
        """The answer's text in these tool-call deltas."""
        for d in deltas:
            if d.name == self._name:
                self._calls.add(d.index)
        return "".join(d.arguments for d in deltas if d.index in self._calls)


def forced_finish(reason: FinishReason) -> FinishReason:
    """A forced call ends the turn with stop_reason tool_use; for the caller it is an answer."""
    return "stop" if reason == "tool_calls" else reason
