"""Ollama's /api/chat as a server speaks it: NDJSON streaming, tool calls with object
arguments and no ids (each streamed call whole, in its line), ``format``, top-level
``logprobs``."""

from __future__ import annotations

import json
from typing import Any

from .common import BadRequest, check_tool_name, require, text_of
from .model import Ask, Reply, Turn


class OllamaDialect:
    """/api/chat with NDJSON streaming."""

    name = "ollama"
    first_content_frame = 0
    path = "/ollama/api/chat"
    stream_type = "application/x-ndjson"
    overloaded_status = 503

    def is_stream(self, body: dict[str, Any]) -> bool:
        return body.get("stream", True) is not False

    # ------------------------------------------------------------------ requests
    def ask(self, body: dict[str, Any]) -> Ask:
        msgs = body["messages"]
        fmt = body.get("format")
        require(fmt in (None, "", "json") or isinstance(fmt, dict), f"invalid format {fmt!r}")
        want = body.get("logprobs", False)
        top = body.get("top_logprobs")
        require(isinstance(want, bool), "logprobs must be a boolean")
        require(top is None or (isinstance(top, int) and 0 <= top <= 20), "bad top_logprobs")
        return Ask(
            model=body["model"],
            turns=_turns(msgs),
            texts=[text_of(m.get("content")) for m in msgs],
            limit=(body.get("options") or {}).get("num_predict"),
            tools=_tools(body.get("tools")),
            schema=fmt if isinstance(fmt, dict) else None,
            json_object=fmt == "json",
            logprobs=(top or 0) if want else None,
        )

    # ------------------------------------------------------------------ replies
    def _line(self, r: Reply, message: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "model": r.model,
            "created_at": "2025-01-01T00:00:00Z",
            "message": {"role": "assistant", **message},
            "done": False,
            **extra,
        }

    def _done(self, r: Reply, message: dict[str, Any]) -> dict[str, Any]:
        line = self._line(
            r,
            message,
            done=True,
            done_reason="length" if r.finish == "length" else "stop",
            total_duration=2_000_000,
            prompt_eval_count=r.prompt_tokens,
            prompt_eval_duration=500_000,
            eval_count=r.completion_tokens,
            eval_duration=1_000_000,
        )
        return line

    def full(self, r: Reply) -> dict[str, Any]:
        message: dict[str, Any] = {"content": r.text}
        if r.calls:
            message["tool_calls"] = _calls(r, 0, len(r.calls))
        out = self._done(r, message)
        if r.logprobs is not None:
            out["logprobs"] = r.logprob_entries()
        return out

    def frames(self, r: Reply, body: dict[str, Any]) -> list[bytes]:
        out = []
        entries = r.logprob_entries()
        for i, p in enumerate(r.pieces):
            extra = {"logprobs": [entries[i]]} if r.logprobs is not None else {}
            out.append(self._line(r, {"content": p}, **extra))
        step = max(1, r.knobs.calls_per_line)
        for start in range(0, len(r.calls), step):
            calls = _calls(r, start, start + step)
            out.append(self._line(r, {"content": "", "tool_calls": calls}))
        out.append(self._done(r, {"content": ""}))
        return [json.dumps(line).encode() + b"\n" for line in out]

    # ------------------------------------------------------------------ errors
    def error(self, kind: str, message: str) -> dict[str, Any]:
        return {"error": message}

    def bad_request(self, exc: BadRequest) -> dict[str, Any]:
        return {"error": str(exc)}

    def error_frame(self, kind: str, message: str) -> bytes:
        return json.dumps(self.error(kind, message)).encode() + b"\n"

    def garbage_frame(self) -> bytes:
        return b'{"message": {"content": "x"\n'

    def wrong_shape_frame(self) -> bytes:
        return json.dumps({"message": {"content": 42}, "done": False}).encode() + b"\n"


def _calls(r: Reply, start: int, stop: int) -> list[dict[str, Any]]:
    return [{"function": {"name": c.name, "arguments": c.arguments}} for c in r.calls[start:stop]]


# ---------------------------------------------------------------------- request checks
def _turns(msgs: list[dict[str, Any]]) -> list[Turn]:
    turns: list[Turn] = []
    for i, m in enumerate(msgs):
        role = m.get("role")
        require(role in ("system", "user", "assistant", "tool"), f"invalid role {role!r}")
        for j, c in enumerate(m.get("tool_calls") or []):
            arguments = (c.get("function") or {}).get("arguments")
            # The server decodes arguments into a map: a JSON string does not fit.
            require(
                isinstance(arguments, dict),
                f"json: cannot unmarshal {type(arguments).__name__} into Go struct field "
                f"messages.{i}.tool_calls.{j}.function.arguments of type "
                "api.ToolCallFunctionArguments",
            )
        content = m.get("content")
        require(isinstance(content, str), f"messages.{i}.content must be a string")
        content = str(content)
        if role == "tool":
            if turns and turns[-1].role == "tool":
                turns[-1].results.append(content)
            else:
                turns.append(Turn("tool", results=[content]))
        elif role != "system":
            turns.append(Turn(str(role), content))
    return turns


def _tools(raw: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i, t in enumerate(raw or []):
        fn = t.get("function") or {}
        require(t.get("type") == "function" and isinstance(fn, dict), f"tools[{i}]: bad tool")
        name = check_tool_name(fn.get("name"), f"tools[{i}].function.name")
        out[name] = fn.get("parameters") or {"type": "object", "properties": {}}
    return out
