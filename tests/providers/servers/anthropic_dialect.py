"""The Messages API as a server speaks it, with the API's documented checks for tools,
``tool_choice``, and tool_use / tool_result pairing (every call's result in the very next
user message). Structured output is a forced tool here, as it is in the real API."""

from __future__ import annotations

from typing import Any

from .common import KINDS, BadRequest, check_tool_name, require, sse, text_of
from .model import Ask, Reply, Turn

PREFACE = "Let me check."
"""What the fake model writes before its tool calls when no tool is forced."""

_TOP_LEVEL = {
    "model",
    "messages",
    "max_tokens",
    "stream",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "tools",
    "tool_choice",
    "metadata",
}


class AnthropicDialect:
    """Messages API."""

    name = "anthropic"
    first_content_frame = 3
    path = "/anthropic/v1/messages"
    stream_type = "text/event-stream"
    overloaded_status = 529

    def is_stream(self, body: dict[str, Any]) -> bool:
        return bool(body.get("stream"))

    # ------------------------------------------------------------------ requests
    def ask(self, body: dict[str, Any]) -> Ask:
        for key in sorted(set(body) - _TOP_LEVEL):
            raise BadRequest(f"{key}: Extra inputs are not permitted", key)
        msgs = body["messages"]
        tools = _tools(body.get("tools"))
        choice, parallel = _tool_choice(body.get("tool_choice"), tools)
        texts = [text_of(m.get("content")) for m in msgs]
        forced = choice not in (None, "auto", "none")
        return Ask(
            model=body["model"],
            turns=_turns(msgs),
            texts=texts + ([text_of(body["system"])] if "system" in body else []),
            limit=body["max_tokens"],
            tools=tools,
            choice=choice,
            parallel=parallel,
            preface="" if forced else PREFACE,  # the API writes no text before a forced call
        )

    # ------------------------------------------------------------------ replies
    def _stop(self, r: Reply) -> str:
        return {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}[r.finish]

    def _blocks(self, r: Reply) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if r.pieces or not r.calls:
            blocks.append({"type": "text", "text": r.text})
        blocks += [
            {"type": "tool_use", "id": f"toolu_{c.id}", "name": c.name, "input": c.arguments}
            for c in r.calls
        ]
        return blocks

    def full(self, r: Reply) -> dict[str, Any]:
        return {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": r.model,
            "content": self._blocks(r),
            "stop_reason": self._stop(r),
            "stop_sequence": None,
            "usage": {
                "input_tokens": r.prompt_tokens - r.cached_tokens,
                "output_tokens": r.completion_tokens,
                "cache_read_input_tokens": r.cached_tokens,
                "cache_creation_input_tokens": 0,
            },
        }

    def frames(self, r: Reply, body: dict[str, Any]) -> list[bytes]:
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": r.model,
                "content": [],
                "stop_reason": None,
                "usage": {
                    "input_tokens": r.prompt_tokens - r.cached_tokens,
                    "output_tokens": 1,
                    "cache_read_input_tokens": r.cached_tokens,
                    "cache_creation_input_tokens": 0,
                },
            },
        }
        out = [sse(start, "message_start")]
        index = 0
        if r.pieces or not r.calls:
            block = {"type": "text", "text": ""}
            out.append(_event("content_block_start", index=index, content_block=block))
            out.append(sse({"type": "ping"}, "ping"))
            for p in r.pieces:
                delta = {"type": "text_delta", "text": p}
                out.append(_event("content_block_delta", index=index, delta=delta))
            out.append(_event("content_block_stop", index=index))
            index += 1
        else:
            out.append(sse({"type": "ping"}, "ping"))
        out += self._tool_frames(r, index)
        end = {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop(r), "stop_sequence": None},
            "usage": {"output_tokens": r.completion_tokens},
        }
        out.append(sse(end, "message_delta"))
        out.append(sse({"type": "message_stop"}, "message_stop"))
        return out

    def _tool_frames(self, r: Reply, first_index: int) -> list[bytes]:
        """One tool_use block per call; its input streamed as the knobs cut it (a cut that
        spans the end of a call becomes the last delta of one block, the first of the next)."""
        fragments: dict[int, list[str]] = {i: [] for i in range(len(r.calls))}
        for frame in r.argument_frames() if r.calls else []:
            for call, fragment in frame:
                fragments[call].append(fragment)
        out = []
        for call, c in enumerate(r.calls):
            index = first_index + call
            block = {"type": "tool_use", "id": f"toolu_{c.id}", "name": c.name, "input": {}}
            out.append(_event("content_block_start", index=index, content_block=block))
            for fragment in ["", *fragments[call]]:  # the API's first delta is often empty
                delta = {"type": "input_json_delta", "partial_json": fragment}
                out.append(_event("content_block_delta", index=index, delta=delta))
            out.append(_event("content_block_stop", index=index))
        return out

    # ------------------------------------------------------------------ errors
    def error(self, kind: str, message: str) -> dict[str, Any]:
        if kind == "context":
            message = "prompt is too long: 210000 tokens > 200000 maximum"
        return {"type": "error", "error": {"type": KINDS[kind][2], "message": message}}

    def bad_request(self, exc: BadRequest) -> dict[str, Any]:
        return {"type": "error", "error": {"type": "invalid_request_error", "message": str(exc)}}

    def error_frame(self, kind: str, message: str) -> bytes:
        return sse(self.error(kind, message), "error")

    def garbage_frame(self) -> bytes:
        return b'event: content_block_delta\ndata: {"type": "content_block_delta", "delta"\n\n'

    def wrong_shape_frame(self) -> bytes:
        return sse({"type": "content_block_delta", "delta": None}, "content_block_delta")


def _event(kind: str, **fields: Any) -> bytes:
    return sse({"type": kind, **fields}, kind)


# ---------------------------------------------------------------------- request checks
def _turns(msgs: list[dict[str, Any]]) -> list[Turn]:
    """The conversation; a tool_use block needs its tool_result in the next message, and a
    tool_result must answer a tool_use of the message before it."""
    turns: list[Turn] = []
    calls: set[str] = set()  # tool_use ids of the previous (assistant) message
    for i, m in enumerate(msgs):
        role = m.get("role")
        where = f"messages.{i}.role"
        require(role in ("user", "assistant"), f"{where}: Input should be 'user' or 'assistant'")
        content = m.get("content")
        blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
        results = [b for b in blocks if b.get("type") == "tool_result"]
        answered = {b.get("tool_use_id") for b in results}
        unexpected = sorted(str(x) for x in answered - calls)
        require(
            not unexpected,
            f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
            f"{', '.join(unexpected)}. Each `tool_result` block must have a corresponding "
            "`tool_use` block in the previous message.",
            f"messages.{i}.content",
        )
        missing = sorted(calls - answered)
        require(
            not missing,
            f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks "
            f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
            "corresponding `tool_result` block in the next message.",
            f"messages.{i - 1}",
        )
        calls = _tool_uses(blocks, i) if role == "assistant" else set()
        if results:
            turns.append(Turn("tool", results=[text_of(b.get("content")) for b in results]))
        else:
            turns.append(Turn(str(role), text_of(content)))
    require(not calls, "the last message's `tool_use` ids have no `tool_result`", "messages")
    return turns


def _tool_uses(blocks: list[dict[str, Any]], i: int) -> set[str]:
    ids = set()
    for j, b in enumerate(blocks):
        where = f"messages.{i}.content.{j}"
        if b.get("type") == "text":
            require(bool(b.get("text")), f"{where}: text content blocks must be non-empty", where)
        elif b.get("type") == "tool_use":
            ok = isinstance(b.get("id"), str) and isinstance(b.get("name"), str)
            require(ok and isinstance(b.get("input"), dict), f"{where}: bad tool_use", where)
            ids.add(b["id"])
        else:
            raise BadRequest(f"{where}.type: unexpected block type {b.get('type')!r}", where)
    return ids


def _tools(raw: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i, t in enumerate(raw or []):
        where = f"tools.{i}.custom"
        for key in sorted(set(t) - {"name", "description", "input_schema", "cache_control"}):
            raise BadRequest(f"{where}.{key}: Extra inputs are not permitted", where)
        name = check_tool_name(t.get("name"), f"{where}.name")
        schema = t.get("input_schema")
        ok = isinstance(schema, dict) and schema.get("type") == "object"
        require(ok, f"{where}.input_schema.type: Input should be 'object'", where)
        out[name] = schema
    return out


def _tool_choice(raw: Any, tools: dict[str, Any]) -> tuple[str | None, bool]:
    if raw is None:
        return None, True
    require(bool(tools), "tool_choice may only be specified while providing tools", "tool_choice")
    kind = raw.get("type")
    allowed = {"type", "disable_parallel_tool_use"} | ({"name"} if kind == "tool" else set())
    if kind == "none":
        allowed = {"type"}
    extra = sorted(set(raw) - allowed)
    for key in extra:
        raise BadRequest(f"tool_choice.{kind}.{key}: Extra inputs are not permitted", "tool_choice")
    parallel = not raw.get("disable_parallel_tool_use", False)
    if kind == "tool":
        require(raw.get("name") in tools, f"tool_choice names an unknown tool {raw.get('name')!r}")
        return str(raw["name"]), parallel
    names = {"auto": "auto", "any": "required", "none": "none"}
    require(kind in names, f"tool_choice.type: unexpected value {kind!r}", "tool_choice.type")
    return names[kind], parallel
