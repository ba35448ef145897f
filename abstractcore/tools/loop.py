"""The tool loop: call the model, run the tools it asks for, feed the results back, repeat.

:func:`run_tools` and :func:`arun_tools` share one implementation (:func:`_steps`, a
generator that says what to do next); they differ only in how they call the model and the
tools. A tool that raises, an unknown tool and arguments that do not validate all become an
error result the model reads on its next turn, never an exception out of the loop.
``tool_choice`` applies to the first turn only, so a ``"required"`` call can be followed by
a final answer (later turns use ``"auto"``).
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ..errors import InvalidRequestError, MaxTurnsExceededError, ToolCallError
from ..types import GenerateResponse, Message, ToolCall, Usage
from .calls import validate_tool_calls
from .definition import Tool, normalize_tools

if TYPE_CHECKING:
    from ..providers.base import BaseProvider, MessageInput

__all__ = ["DEFAULT_MAX_TURNS", "ToolResult", "ToolRun", "arun_tools", "run_tools"]

#: Model calls a loop makes at most unless ``max_turns`` says otherwise.
DEFAULT_MAX_TURNS = 10


@dataclass
class ToolResult:
    """One executed call: what the function returned (or the error), and the text the model
    was given."""

    call: ToolCall
    content: str
    output: Any = None
    error: str | None = None


@dataclass
class ToolRun:
    """A finished loop: the final ``response``, the whole transcript (``messages``: the
    input, every assistant turn and every tool result), each executed call, the number of
    model calls, and their summed usage."""

    response: GenerateResponse
    messages: list[Message]
    tool_results: list[ToolResult] = field(default_factory=list)
    turns: int = 0
    usage: Usage = field(default_factory=Usage)


@dataclass
class _CallModel:
    kwargs: dict[str, Any]


@dataclass
class _RunTools:
    calls: list[tuple[ToolCall, Tool | None, dict[str, Any] | None, str | None]]


_Step = _CallModel | _RunTools


def run_tools(
    llm: BaseProvider,
    prompt: str | None = None,
    *,
    tools: Sequence[Any],
    messages: Sequence[MessageInput] | None = None,
    system_prompt: str | None = None,
    max_turns: int = DEFAULT_MAX_TURNS,
    **kwargs: Any,
) -> ToolRun:
    """Run the tool loop with ``llm.generate``; sync tools are called in order, async ones
    on a fresh event loop. Raises MaxTurnsExceededError (with the transcript) when the model
    still calls tools after ``max_turns`` model calls."""
    steps = _steps(llm, prompt, tools, messages, system_prompt, max_turns, kwargs)
    reply: Any = None
    try:
        while True:
            step = steps.send(reply)
            if isinstance(step, _CallModel):
                reply = _call_model(llm, step.kwargs)
            else:
                reply = [_run_sync(*c) for c in step.calls]
    except StopIteration as stop:
        result: ToolRun = stop.value
        return result


async def arun_tools(
    llm: BaseProvider,
    prompt: str | None = None,
    *,
    tools: Sequence[Any],
    messages: Sequence[MessageInput] | None = None,
    system_prompt: str | None = None,
    max_turns: int = DEFAULT_MAX_TURNS,
    **kwargs: Any,
) -> ToolRun:
    """Async twin of :func:`run_tools`: the calls of one turn run concurrently, sync tools
    on worker threads so the event loop never blocks."""
    steps = _steps(llm, prompt, tools, messages, system_prompt, max_turns, kwargs)
    reply: Any = None
    try:
        while True:
            step = steps.send(reply)
            if isinstance(step, _CallModel):
                try:
                    reply = await llm.agenerate(**step.kwargs)
                except ToolCallError as exc:
                    reply = _bad_call_response(exc)
            else:
                reply = list(await asyncio.gather(*(_run_async(*c) for c in step.calls)))
    except StopIteration as stop:
        result: ToolRun = stop.value
        return result


def _steps(
    llm: BaseProvider,
    prompt: str | None,
    tools: Sequence[Any],
    messages: Sequence[MessageInput] | None,
    system_prompt: str | None,
    max_turns: int,
    kwargs: dict[str, Any],
) -> Generator[_Step, Any, ToolRun]:
    """The loop itself: yields what to do, receives the outcome."""
    if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
        raise InvalidRequestError(
            f"max_turns must be an integer >= 1, got {max_turns!r}", field="max_turns"
        )
    offered = normalize_tools(tools)
    if not offered:
        raise InvalidRequestError("run_tools needs at least one tool", field="tools")
    for i, t in enumerate(offered):
        if t.function is None:
            raise InvalidRequestError(
                f"tool {t.name!r} has no Python function to run (it came from a model or a "
                "schema); pass the function, or a Tool made with Tool.from_function",
                field=f"tools[{i}]",
            )
    transcript = list(
        llm.build_request(prompt, messages=messages, system_prompt=system_prompt).messages
    )
    results: list[ToolResult] = []
    usage = Usage()
    choice = kwargs.pop("tool_choice", None)
    for turn in range(max_turns + 1):
        request = {**kwargs, "messages": list(transcript), "tools": offered}
        if choice is not None and turn == 0:
            request["tool_choice"] = choice
        response: GenerateResponse = yield _CallModel(request)
        usage = usage + response.usage
        run = ToolRun(response, [*transcript, response.message()], list(results), turn + 1, usage)
        if not response.tool_calls:
            return run
        if turn + 1 >= max_turns:
            raise MaxTurnsExceededError(
                f"the model still called tools after max_turns={max_turns} model calls",
                result=run,
            )
        transcript.append(response.message())
        prepared = [_prepare(c, offered) for c in response.tool_calls]
        outcomes: list[ToolResult] = yield _RunTools(prepared)
        for outcome in outcomes:
            results.append(outcome)
            transcript.append(
                Message(
                    role="tool",
                    tool_call_id=outcome.call.id,
                    name=outcome.call.name,
                    content=outcome.content,
                )
            )
    raise AssertionError("unreachable: the last turn returns or raises")


def _call_model(llm: BaseProvider, kwargs: dict[str, Any]) -> GenerateResponse:
    try:
        return llm.generate(**kwargs)
    except ToolCallError as exc:
        return _bad_call_response(exc)


def _bad_call_response(exc: ToolCallError) -> GenerateResponse:
    """A response whose calls did not validate goes on: each bad call gets an error result."""
    if exc.response is None or not exc.response.tool_calls:
        raise exc
    return exc.response


def _prepare(
    call: ToolCall, offered: list[Tool]
) -> tuple[ToolCall, Tool | None, dict[str, Any] | None, str | None]:
    """(call, tool, keyword arguments, error): the arguments checked before running."""
    tool = next((t for t in offered if t.name == call.name), None)
    try:
        (checked,) = validate_tool_calls([call], offered)
        assert tool is not None
        return call, tool, tool.call_arguments(checked.arguments), None
    except (ToolCallError, ValueError) as exc:
        return call, tool, None, str(exc)


def _run_sync(
    call: ToolCall, tool: Tool | None, args: dict[str, Any] | None, error: str | None
) -> ToolResult:
    if error is not None or tool is None or args is None:
        return _failed(call, error or "unknown tool")
    assert tool.function is not None
    try:
        value = tool.function(**args)
        if inspect.isawaitable(value):
            value = asyncio.run(_await(value))
    except Exception as exc:  # noqa: BLE001 - the model is told, the loop goes on
        return _failed(call, f"{type(exc).__name__}: {exc}")
    return ToolResult(call=call, content=_as_text(value), output=value)


async def _run_async(
    call: ToolCall, tool: Tool | None, args: dict[str, Any] | None, error: str | None
) -> ToolResult:
    if error is not None or tool is None or args is None:
        return _failed(call, error or "unknown tool")
    fn = tool.function
    assert fn is not None
    try:
        if inspect.iscoroutinefunction(fn):
            value = await fn(**args)
        else:
            value = await asyncio.to_thread(fn, **args)
            if inspect.isawaitable(value):
                value = await value
    except Exception as exc:  # noqa: BLE001 - the model is told, the loop goes on
        return _failed(call, f"{type(exc).__name__}: {exc}")
    return ToolResult(call=call, content=_as_text(value), output=value)


async def _await(value: Any) -> Any:
    return await value


def _failed(call: ToolCall, error: str) -> ToolResult:
    return ToolResult(call=call, content=f"Error: {error}", error=error)


def _as_text(value: Any) -> str:
    """A tool's return value as the text the model reads."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)
