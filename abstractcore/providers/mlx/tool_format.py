"""Tools on a local model: how they are written into the prompt, and how calls are read back.

- **Native**: a model whose chat template renders ``tools`` and whose tokenizer knows its
  tool-call markers (mlx-lm infers them: ``TokenizerWrapper.tool_call_start`` /
  ``tool_call_end`` / ``tool_parser``, one of ``mlx_lm.tool_parsers``) gets the tools, the
  assistant turns' calls and the tool results through ``apply_chat_template``, and its calls
  are parsed by mlx-lm's parser for that family.
- **Fallback** (SmolLM2's template has no tools): the tools are described in the system
  prompt, and the model is asked to answer with ``<tool_call>{"name": ..., "arguments":
  {...}}</tool_call>`` blocks, the JSON tool-call format of Hermes/Qwen models, parsed by
  mlx-lm's ``json_tools`` parser. Earlier calls are written back in the same format.

:class:`ToolCallParser` reads the generated text as it streams: text before a call is
content, a call becomes :class:`~abstractcore.types.ToolCallDelta`s once its end marker (or
the end of the answer) is reached; the markup never reaches ``content``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ...tools.calls import UNREADABLE_CALL
from ...tools.definition import Tool
from ...types import Message, ToolCallDelta

__all__ = ["ToolCallParser", "ToolFormat", "render_messages", "tool_format_for"]

_FALLBACK_START = "<tool_call>"
_FALLBACK_END = "</tool_call>"

_FALLBACK_PROMPT = """# Tools

You may call one or more functions to assist with the user query. The functions are \
described in JSON inside <tools></tools>:
<tools>
{tools}
</tools>

To call a function, answer with a JSON object holding its name and its arguments inside \
<tool_call></tool_call> tags, one block per call:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


@dataclass(frozen=True)
class ToolFormat:
    """How one model writes tool calls: its markers, its parser, and whether its chat
    template renders tools itself (``native``). ``json_calls``: a call is the JSON object
    ``{"name", "arguments"}`` between the markers (then a grammar can force one)."""

    start: str
    end: str | None
    parse: Callable[[str, Any], Any]
    native: bool
    json_calls: bool


def tool_format_for(tokenizer: Any) -> ToolFormat:
    """The model's own format when its template and tokenizer support tools, else the
    fallback (json_tools markers, tools described in the system prompt)."""
    from mlx_lm.tool_parsers import json_tools

    template = str(getattr(tokenizer, "chat_template", "") or "")
    parser = getattr(tokenizer, "tool_parser", None)
    if getattr(tokenizer, "has_tool_calling", False) and parser is not None and "tools" in template:
        module = getattr(parser, "__module__", "")
        return ToolFormat(
            start=tokenizer.tool_call_start,
            end=tokenizer.tool_call_end or None,  # mistral's "": the call runs to the end
            parse=parser,
            native=True,
            json_calls=module.endswith(".json_tools"),
        )
    return ToolFormat(
        start=_FALLBACK_START,
        end=_FALLBACK_END,
        parse=json_tools.parse_tool_call,
        native=False,
        json_calls=True,
    )


def tool_json(tool: Tool) -> dict[str, Any]:
    """A tool in the OpenAI shape chat templates take."""
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def render_messages(
    messages: Sequence[Message], tools: Sequence[Tool], fmt: ToolFormat | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The chat-template input for ``messages`` (and ``tools``, rendered as ``fmt`` says;
    None: plain messages): (messages as dicts, extra ``apply_chat_template`` arguments)."""
    if fmt is None:
        return [_plain(m) for m in messages], {}
    if fmt.native:
        out = [_native(m) for m in messages]
        return out, ({"tools": [tool_json(t) for t in tools]} if tools else {})
    out = [_fallback(m, fmt) for m in messages]
    if tools:
        described = "\n".join(json.dumps(tool_json(t), ensure_ascii=False) for t in tools)
        block = _FALLBACK_PROMPT.format(tools=described)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{block}"}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out, {}


def _plain(m: Message) -> dict[str, Any]:
    d: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.name is not None:
        d["name"] = m.name
    if m.tool_call_id is not None:
        d["tool_call_id"] = m.tool_call_id
    return d


def _native(m: Message) -> dict[str, Any]:
    d = _plain(m)
    if m.tool_calls:  # the shape Hugging Face chat templates document
        d["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    return d


def _fallback(m: Message, fmt: ToolFormat) -> dict[str, Any]:
    d = _plain(m)
    if m.tool_calls:
        blocks = [
            f"{fmt.start}\n{json.dumps({'name': c.name, 'arguments': c.arguments})}\n{fmt.end}"
            for c in m.tool_calls
        ]
        d["content"] = "\n".join([m.content, *blocks] if m.content else blocks)
    return d


class ToolCallParser:
    """Splits streamed text into content and tool calls (one per request, caller thread)."""

    def __init__(self, fmt: ToolFormat, tools: Sequence[Tool]) -> None:
        self._fmt = fmt
        self._tools = [tool_json(t) for t in tools]
        self._buffer = ""
        self._in_call = False
        self.calls = 0

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        """(content safe to emit, calls completed) after ``text``."""
        self._buffer += text
        content: list[str] = []
        deltas: list[ToolCallDelta] = []
        start, end = self._fmt.start, self._fmt.end
        while True:
            if not self._in_call:
                at = self._buffer.find(start)
                if at == -1:
                    keep = _partial_suffix(self._buffer, start)
                    content.append(self._buffer[: len(self._buffer) - keep])
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    break
                content.append(self._buffer[:at])
                self._buffer = self._buffer[at + len(start) :]
                self._in_call = True
            if end is None:
                break  # a format without an end marker: the call runs to the end
            at = self._buffer.find(end)
            if at == -1:
                break
            deltas += self._parse(self._buffer[:at])
            self._buffer = self._buffer[at + len(end) :]
            self._in_call = False
        return "".join(content), deltas

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """What is left when the answer ends: held-back text, or an unterminated call."""
        rest, self._buffer = self._buffer, ""
        if self._in_call:
            self._in_call = False
            return "", self._parse(rest)
        return rest, []

    def _parse(self, text: str) -> list[ToolCallDelta]:
        try:
            parsed = self._fmt.parse(text, self._tools)
        except (ValueError, TypeError, KeyError):
            # A call that cannot be read is still a call: validation reports it, with its text.
            return [self._delta(UNREADABLE_CALL, text.strip())]
        items = parsed if isinstance(parsed, list) else [parsed]
        out = []
        for item in items:
            if not isinstance(item, dict) or not item.get("name"):
                out.append(self._delta(UNREADABLE_CALL, text.strip()))
                continue
            args = item.get("arguments", {})
            raw = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
            out.append(self._delta(str(item["name"]), raw))
        return out

    def _delta(self, name: str, arguments: str) -> ToolCallDelta:
        index = self.calls
        self.calls += 1
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        return ToolCallDelta(index=index, id=call_id, name=name, arguments=arguments)


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest tail of ``text`` that starts ``marker`` (held back)."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0
