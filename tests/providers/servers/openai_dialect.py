"""Chat Completions as a server speaks it, with the API's documented request checks for tools,
tool results, ``response_format`` (strict schemas) and ``logprobs``."""

from __future__ import annotations

from typing import Any

from .common import KINDS, BadRequest, check_tool_name, require, sse, text_of
from .model import Ask, Reply, Turn

_ROLES = ("system", "developer", "user", "assistant", "tool")


class OpenAIDialect:
    """Chat Completions."""

    name = "openai"
    first_content_frame = 1
    path = "/openai/v1/chat/completions"
    stream_type = "text/event-stream"
    overloaded_status = 503

    def is_stream(self, body: dict[str, Any]) -> bool:
        return bool(body.get("stream"))

    # ------------------------------------------------------------------ requests
    def ask(self, body: dict[str, Any]) -> Ask:
        msgs = body["messages"]
        tools = _tools(body)
        choice = _tool_choice(body, tools)
        parallel = body.get("parallel_tool_calls", True)
        require(isinstance(parallel, bool), "parallel_tool_calls must be a boolean")
        require(
            "parallel_tool_calls" not in body or bool(tools),
            "Invalid value for 'parallel_tool_calls': only allowed when 'tools' are specified.",
            "parallel_tool_calls",
        )
        schema, json_object = _response_format(body.get("response_format"))
        return Ask(
            model=body["model"],
            turns=_turns(msgs),
            texts=[text_of(m.get("content")) for m in msgs],
            limit=body.get("max_completion_tokens", body.get("max_tokens")),
            tools=tools,
            choice=choice,
            parallel=parallel,
            schema=schema,
            json_object=json_object,
            logprobs=_logprobs(body),
        )

    # ------------------------------------------------------------------ replies
    def _usage(self, r: Reply) -> dict[str, Any]:
        return {
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": r.cached_tokens},
        }

    def full(self, r: Reply) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": r.text or None}
        if r.calls:
            message["tool_calls"] = [
                {
                    "id": f"call_{c.id}",
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.text},
                }
                for c in r.calls
            ]
        else:
            message["content"] = r.text
        logprobs = None
        if r.logprobs is not None:
            logprobs = {"content": r.logprob_entries(), "refusal": None}
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": r.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": r.finish}
            ],
            "usage": self._usage(r),
        }

    def _chunk(
        self, r: Reply, delta: dict[str, Any], finish: str | None, logprobs: Any = None
    ) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": r.model,
            "choices": [choice],
        }

    def frames(self, r: Reply, body: dict[str, Any]) -> list[bytes]:
        out = [sse(self._chunk(r, {"role": "assistant", "content": ""}, None))]
        entries = r.logprob_entries()
        for i, p in enumerate(r.pieces):
            lp = {"content": [entries[i]], "refusal": None} if r.logprobs is not None else None
            out.append(sse(self._chunk(r, {"content": p}, None, lp)))
        started: set[int] = set()
        for frame in r.argument_frames() if r.calls else []:
            deltas: list[dict[str, Any]] = []
            for index, fragment in frame:
                delta: dict[str, Any] = {"index": index, "function": {"arguments": fragment}}
                if index not in started:  # a call's first delta says its id and name
                    started.add(index)
                    call = r.calls[index]
                    delta = {
                        "index": index,
                        "id": f"call_{call.id}",
                        "type": "function",
                        "function": {"name": call.name, "arguments": fragment},
                    }
                deltas.append(delta)
            out.append(sse(self._chunk(r, {"tool_calls": deltas}, None)))
        out.append(sse(self._chunk(r, {}, r.finish)))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": r.model}
            out.append(sse({**usage, "choices": [], "usage": self._usage(r)}))
        out.append(sse("[DONE]"))
        return out

    # ------------------------------------------------------------------ errors
    def error(self, kind: str, message: str) -> dict[str, Any]:
        etype, code, _ = KINDS[kind]
        param = (
            "temperature" if kind == "bad_request" else ("messages" if kind == "context" else None)
        )
        return {"error": {"message": message, "type": etype, "param": param, "code": code}}

    def bad_request(self, exc: BadRequest) -> dict[str, Any]:
        error = {"message": str(exc), "type": "invalid_request_error", "param": exc.param}
        return {"error": {**error, "code": None}}

    def error_frame(self, kind: str, message: str) -> bytes:
        return sse(self.error(kind, message))

    def garbage_frame(self) -> bytes:
        return b'data: {"choices": [{"delta": {"content": "x"\n\n'

    def wrong_shape_frame(self) -> bytes:
        return sse({"choices": "not-a-list"})


# ---------------------------------------------------------------------- request checks
def _turns(msgs: list[dict[str, Any]]) -> list[Turn]:
    """The conversation; a tool message must answer a call of the assistant turn before it,
    and every call must be answered before the next non-tool message."""
    turns: list[Turn] = []
    pending: set[str] = set()
    for i, m in enumerate(msgs):
        role = m.get("role")
        require(role in _ROLES, f"Invalid value: '{role}'. Supported values are: {_ROLES}")
        if role == "tool":
            call_id = m.get("tool_call_id")
            require(
                call_id in pending,
                f"Invalid parameter: messages with role 'tool' must be a response to a "
                f"preceeding message with 'tool_calls' (tool_call_id {call_id!r}).",
                f"messages.[{i}].role",
            )
            pending.discard(call_id)
            content = m.get("content")
            require(isinstance(content, str), "tool content must be a string", f"messages.[{i}]")
            content = str(content)
            if turns and turns[-1].role == "tool":
                turns[-1].results.append(content)
            else:
                turns.append(Turn("tool", results=[content]))
            continue
        _answered(pending, f"messages.[{i}].role")
        if role == "assistant" and m.get("tool_calls"):
            pending = _assistant_calls(m["tool_calls"], f"messages.[{i}].tool_calls")
        if role in ("system", "developer"):
            continue
        turns.append(Turn(str(role), text_of(m.get("content"))))
    _answered(pending, "messages")
    return turns


def _answered(pending: set[str], param: str) -> None:
    require(
        not pending,
        "An assistant message with 'tool_calls' must be followed by tool messages responding "
        f"to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
        f"{', '.join(sorted(pending))}",
        param,
    )


def _assistant_calls(calls: Any, where: str) -> set[str]:
    require(isinstance(calls, list), f"{where} must be an array", where)
    ids = set()
    for j, c in enumerate(calls):
        fn = c.get("function") or {}
        ok = isinstance(c.get("id"), str) and c.get("type") == "function"
        ok = ok and isinstance(fn.get("name"), str) and isinstance(fn.get("arguments"), str)
        shape = "{id, type: 'function', function: {name, arguments: string}}"
        require(ok, f"{where}[{j}] must be {shape}", f"{where}[{j}]")
        ids.add(c["id"])
    return ids


def _tools(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i, t in enumerate(body.get("tools") or []):
        where = f"tools[{i}]"
        require(t.get("type") == "function" and set(t) == {"type", "function"}, where, where)
        fn = t["function"]
        extra = set(fn) - {"name", "description", "parameters", "strict"}
        require(not extra, f"{where}.function: unknown parameter {sorted(extra)}", where)
        name = check_tool_name(fn.get("name"), f"{where}.function.name")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if fn.get("strict") is True:
            check_strict(params, f"Invalid schema for function '{name}'", ())
        out[name] = params
    return out


def _tool_choice(body: dict[str, Any], tools: dict[str, Any]) -> str | None:
    choice = body.get("tool_choice")
    if choice is None:
        return None
    require(
        bool(tools),
        "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
        "specified.",
        "tool_choice",
    )
    if isinstance(choice, dict):
        fn = choice.get("function") or {}
        ok = choice.get("type") == "function" and fn.get("name") in tools
        require(ok, f"Invalid value for 'tool_choice': {choice!r}", "tool_choice")
        return str(fn["name"])
    require(
        choice in ("auto", "none", "required"), f"Invalid tool_choice {choice!r}", "tool_choice"
    )
    return str(choice)


def _response_format(spec: Any) -> tuple[dict[str, Any] | None, bool]:
    if spec is None or spec.get("type") == "text":
        return None, False
    kind = spec.get("type")
    if kind == "json_object":
        require(set(spec) == {"type"}, "response_format: unknown parameter", "response_format")
        return None, True
    require(kind == "json_schema", f"Invalid response_format type {kind!r}", "response_format.type")
    inner = spec.get("json_schema")
    where = "response_format.json_schema"
    require(isinstance(inner, dict), f"Missing required parameter: '{where}'.", where)
    extra = set(inner) - {"name", "schema", "strict", "description"}
    require(not extra, f"{where}: unknown parameter {sorted(extra)}", where)
    name = check_tool_name(inner.get("name"), f"{where}.name")
    schema = inner.get("schema")
    require(isinstance(schema, dict), f"{where}.schema must be an object", f"{where}.schema")
    if inner.get("strict") is True:
        check_strict(schema, f"Invalid schema for response_format '{name}'", ())
    return schema, False


def check_strict(node: Any, what: str, path: tuple[str, ...]) -> None:
    """OpenAI's strict-mode rule: every object closed, every property required."""
    if isinstance(node, list):
        for item in node:
            check_strict(item, what, path)
        return
    if not isinstance(node, dict):
        return
    context = f"({', '.join(repr(p) for p in path)})"
    if node.get("type") == "object" or "properties" in node:
        require(
            node.get("additionalProperties") is False,
            f"{what}: In context={context}, 'additionalProperties' is required to be supplied "
            "and to be false.",
            "response_format",
        )
        missing = sorted(set(node.get("properties", {})) - set(node.get("required", [])))
        require(
            not missing,
            f"{what}: In context={context}, 'required' is required to be supplied and to be an "
            f"array including every key in properties. Missing '{missing[0] if missing else ''}'.",
            "response_format",
        )
    for key, value in node.items():
        if key in ("properties", "$defs", "definitions"):
            for name, sub in value.items():
                check_strict(sub, what, (*path, key, name))
        elif key in ("items", "anyOf", "oneOf", "allOf", "prefixItems", "not"):
            check_strict(value, what, (*path, key))


def _logprobs(body: dict[str, Any]) -> int | None:
    want = body.get("logprobs", False)
    require(isinstance(want, bool), "logprobs must be a boolean", "logprobs")
    top = body.get("top_logprobs")
    if top is None:
        return 0 if want else None
    require(want, "Invalid value: 'top_logprobs' requires 'logprobs' to be true", "top_logprobs")
    ok = isinstance(top, int) and not isinstance(top, bool) and 0 <= top <= 20
    require(ok, "top_logprobs must be an integer in 0-20", "top_logprobs")
    return int(top)
