"""The Anthropic Messages API: POST /v1/messages.

The body is validated with :class:`~.schemas_anthropic.MessagesRequest` and mapped here to
provider keyword arguments: content blocks become abstractcore messages (a user turn's
``tool_result`` blocks become ``tool`` messages), tools and ``tool_choice`` their neutral
forms, ``output_config.format`` a JSON-schema ``response_format``. Responses are built by
:mod:`.anthropic_output`.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .anthropic_output import message_events, message_json
from .generation import CACHE_KEY_HEADER, GenerationParams, generate, open_stream
from .schemas_anthropic import (
    AnthropicAssistantMessage,
    AnthropicTextBlock,
    AnthropicToolResultBlock,
    AnthropicToolUseBlock,
    MessagesRequest,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
)
from .sse import EventStreamResponse
from .state import ServerState
from .validation import validate_body

__all__ = ["messages", "messages_params", "rename_field"]

# provider-side field (its first segment) -> what the client sent
_FIELDS = {
    "max_output_tokens": "max_tokens",
    "stop": "stop_sequences",
    "parallel_tool_calls": "tool_choice.disable_parallel_tool_use",
    "response_format": "output_config.format",
}
_INDEX = re.compile(r"\[(\d+)\]")


def rename_field(field: str) -> str:
    """A provider-side field in the client's words: ``max_output_tokens`` -> ``max_tokens``,
    ``tools[0].parameters`` -> ``tools.0.input_schema``. A message index is dropped: the
    system prompt and tool results are separate messages on the provider's side."""
    field = _INDEX.sub(r".\1", field)
    head, dot, rest = field.partition(".")
    if head == "messages":
        return "messages"
    if head == "tools":
        rest = re.sub(r"(^|\.)(function\.)?parameters(\.|$)", r"\1input_schema\3", rest)
    if head == "response_format":
        rest = rest.removeprefix("json_schema.").removeprefix("json_schema")
    out = _FIELDS.get(head, head)
    return out + (dot + rest if rest else "")


# ---------------------------------------------------------------------- request mapping
def _text(content: str | list[AnthropicTextBlock] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(block.text for block in content)


def _tool_result(block: AnthropicToolResultBlock) -> dict[str, Any]:
    text = _text(block.content)
    # abstractcore's tool messages have no error flag: the text says it, as the tool loop does.
    if block.is_error and not text.startswith("Error"):
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}


def _messages(body: MessagesRequest) -> list[dict[str, Any]]:
    """The conversation as abstractcore messages, the system prompt first."""
    out: list[dict[str, Any]] = []
    if body.system is not None:
        out.append({"role": "system", "content": _text(body.system)})
    for m in body.messages:
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
        elif isinstance(m, AnthropicAssistantMessage):
            said = [b.text for b in m.content if isinstance(b, AnthropicTextBlock)]
            calls = [
                {"id": b.id, "name": b.name, "arguments": b.input}
                for b in m.content
                if isinstance(b, AnthropicToolUseBlock)
            ]
            turn: dict[str, Any] = {"role": "assistant", "content": "\n".join(said)}
            if calls:
                turn["tool_calls"] = calls
            out.append(turn)
        else:
            # Block order is kept: tool results and runs of text alternate as they came.
            texts: list[str] = []
            for block in m.content:
                if isinstance(block, AnthropicToolResultBlock):
                    if texts:
                        out.append({"role": "user", "content": "\n".join(texts)})
                        texts = []
                    out.append(_tool_result(block))
                else:
                    texts.append(block.text)
            if texts or not m.content:
                out.append({"role": "user", "content": "\n".join(texts)})
    return out


def _tools(body: MessagesRequest, kwargs: dict[str, Any]) -> None:
    if body.tools:
        kwargs["tools"] = [
            t.model_dump(
                include={"name", "description", "input_schema", "strict"}, exclude_none=True
            )
            for t in body.tools
        ]
    choice = body.tool_choice
    if choice is None:
        return
    name = (
        choice.name
        if isinstance(choice, ToolChoiceTool)
        else "required"
        if isinstance(choice, ToolChoiceAny)
        else choice.type
    )
    if body.tools or name not in ("auto", "none"):
        kwargs["tool_choice"] = name
    if not isinstance(choice, ToolChoiceNone) and choice.disable_parallel_tool_use is not None:
        if body.tools:
            kwargs["parallel_tool_calls"] = not choice.disable_parallel_tool_use


def messages_params(
    body: MessagesRequest, request: Request, state: ServerState
) -> GenerationParams:
    """A validated Messages body as provider kwargs."""
    kwargs: dict[str, Any] = {
        "messages": _messages(body),
        "max_output_tokens": state.cap_output_tokens(body.max_tokens),
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "stop": body.stop_sequences or None,
        "prompt_cache_key": body.prompt_cache_key or request.headers.get(CACHE_KEY_HEADER) or None,
    }
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    _tools(body, kwargs)
    fmt = body.output_config.format if body.output_config is not None else None
    if fmt is not None:
        kwargs["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": fmt.schema_},
        }
    return GenerationParams(kwargs, bool(body.stream), True, rename_field)


async def messages(request: Request, state: ServerState, started: float) -> Response:
    """POST /v1/messages."""
    body = await state.read_json(request)
    model = state.check_model(body.get("model"))
    params = messages_params(validate_body(MessagesRequest, body, "anthropic"), request, state)
    mid = "msg_" + uuid.uuid4().hex
    if params.stream:
        run = open_stream(state, "messages", params.kwargs, started=started, rename=params.rename)
        keepalive = state.settings.keepalive_interval
        first = await run.first(keepalive)
        events = message_events(
            run, first, mid, model, keepalive, eager_text="tools" not in params.kwargs
        )
        return EventStreamResponse(events, on_close=run.close)
    resp = await generate(
        state,
        "messages",
        params.kwargs,
        receive=request.receive,
        started=started,
        rename=params.rename,
    )
    return JSONResponse(message_json(resp, mid, model))
