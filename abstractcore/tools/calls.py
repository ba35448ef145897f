"""Tool calls coming back from a model: streamed deltas assembled, arguments validated."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..errors import ProviderAPIError, ToolCallError
from ..types import ToolCall, ToolCallDelta
from .definition import Tool

__all__ = ["UNREADABLE_CALL", "ToolCallAssembler", "validate_tool_calls"]

#: The name a parser gives a tool call it could not read (its text is the arguments).
UNREADABLE_CALL = "(unreadable tool call)"


@dataclass
class _Partial:
    id: str | None = None
    name: str | None = None
    parts: list[str] = field(default_factory=list)


class ToolCallAssembler:
    """Joins streamed :class:`ToolCallDelta` pieces, by index, into whole calls.

    The first delta of a call brings its id and name, the rest arguments text in any
    fragments (a split may fall inside a string, an escape or a multi-byte character's
    JSON escape: the text is only parsed once the stream ends).
    """

    def __init__(self) -> None:
        self._calls: dict[int, _Partial] = {}

    def add(self, deltas: Iterable[ToolCallDelta]) -> None:
        """Record the deltas of one chunk."""
        for d in deltas:
            call = self._calls.setdefault(d.index, _Partial())
            if d.id:
                call.id = d.id
            if d.name and not call.name:  # sent once; some servers repeat it on every delta
                call.name = d.name
            if d.arguments:
                call.parts.append(d.arguments)

    def __bool__(self) -> bool:
        return bool(self._calls)

    def calls(self, provider: str | None = None) -> list[ToolCall]:
        """The assembled calls in index order (arguments not yet validated)."""
        out: list[ToolCall] = []
        for index in sorted(self._calls):
            c = self._calls[index]
            if not c.name or not c.id:
                raise ProviderAPIError(
                    f"the stream's tool call #{index} never said its "
                    f"{'name' if not c.name else 'id'}",
                    provider=provider,
                )
            out.append(
                ToolCall.model_validate({"id": c.id, "name": c.name, "arguments": "".join(c.parts)})
            )
        return out


def validate_tool_calls(calls: Sequence[ToolCall], tools: Sequence[Tool]) -> list[ToolCall]:
    """``calls`` with arguments parsed and checked against each tool's schema.

    Raises :class:`ToolCallError` (carrying the raw arguments) for a call to a tool that was
    not offered, arguments that are not a JSON object, or arguments the schema rejects.
    """
    by_name = {t.name: t for t in tools}
    out: list[ToolCall] = []
    for call in calls:
        tool = by_name.get(call.name)
        if call.name == UNREADABLE_CALL:
            raise ToolCallError(
                f"the model wrote a tool call that could not be read: {call.raw_arguments!r}",
                tool_name=call.name,
                raw=call.raw_arguments,
                errors="not a tool call in the model's format",
            )
        if tool is None:
            offered = ", ".join(by_name) or "none"
            raise ToolCallError(
                f"the model called the tool {call.name!r}, which was not offered "
                f"(offered: {offered})",
                tool_name=call.name,
                raw=call.raw_arguments,
                errors="unknown tool",
            )
        raw = call.raw_arguments
        try:
            value = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise ToolCallError(
                f"the model's arguments for tool {call.name!r} are not valid JSON: {exc}",
                tool_name=call.name,
                raw=raw,
                errors=str(exc),
            ) from None
        if not isinstance(value, dict):
            raise ToolCallError(
                f"the model's arguments for tool {call.name!r} are not a JSON object",
                tool_name=call.name,
                raw=raw,
                errors=f"expected an object, got {type(value).__name__}",
            )
        try:
            args = tool.validate_arguments(value)
        except ValueError as exc:
            raise ToolCallError(
                f"the model's arguments for tool {call.name!r} do not match its schema: {exc}",
                tool_name=call.name,
                raw=raw,
                errors=str(exc),
            ) from None
        out.append(ToolCall(id=call.id, name=call.name, arguments=args, raw_arguments=raw))
    return out
