"""The OpenAI API: /v1/chat/completions, /v1/completions, /v1/models.

Request bodies are validated with the models of :mod:`.schemas_openai` and mapped here to
provider keyword arguments (a 400 names the wire field); responses and stream chunks are
built by :mod:`.openai_output`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .generation import CACHE_KEY_HEADER, GenerationParams, generate, open_stream
from .http_errors import Rename
from .openai_output import ChunkWriter, chat_json, completion_json, stream_events
from .schemas_openai import (
    ChatAssistantMessage,
    ChatCompletionRequest,
    ChatContent,
    ChatNamedToolChoice,
    ChatSystemMessage,
    ChatToolMessage,
    ChatUserMessage,
    CompletionRequest,
    JsonObjectFormat,
    JsonSchemaFormat,
    SamplingFields,
)
from .sse import EventStreamResponse
from .state import ServerState
from .validation import validate_body

__all__ = [
    "chat_completions",
    "chat_params",
    "completion_params",
    "completions",
    "list_models",
    "rename_field",
]

_COMPLETION_FIELDS = {"max_output_tokens": "max_tokens", "messages": "prompt"}


def rename_field(names: dict[str, str]) -> Rename:
    """A :data:`~.http_errors.Rename` that maps the first segment of a field through
    ``names`` (``max_output_tokens`` -> ``max_tokens``) and keeps the rest."""

    def rename(field: str) -> str:
        cut = min((i for i in (field.find("["), field.find(".")) if i >= 0), default=len(field))
        return names.get(field[:cut], field[:cut]) + field[cut:]

    return rename


# ---------------------------------------------------------------------- request mapping
def _text(content: ChatContent | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(part.text for part in content)


def _message(m: Any) -> dict[str, Any]:
    """One OpenAI message as an abstractcore message."""
    if isinstance(m, ChatToolMessage):
        return {"role": "tool", "content": _text(m.content), "tool_call_id": m.tool_call_id}
    role = "system" if isinstance(m, ChatSystemMessage) else m.role
    out: dict[str, Any] = {"role": role, "content": _text(m.content)}
    if isinstance(m, (ChatSystemMessage, ChatUserMessage, ChatAssistantMessage)) and m.name:
        out["name"] = m.name
    if isinstance(m, ChatAssistantMessage) and m.tool_calls:
        out["tool_calls"] = [
            # ``arguments`` stays the text the model wrote (replayed byte for byte).
            {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
            for c in m.tool_calls
        ]
    return out


def _sampling(
    body: SamplingFields, request: Request, state: ServerState, max_tokens: int | None
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "max_output_tokens": state.cap_output_tokens(max_tokens),
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "seed": body.seed,
        "stop": body.stop or None,
        # The body's key, else the proxy-routing header, else OpenAI's older ``user`` field.
        "prompt_cache_key": (
            body.prompt_cache_key or request.headers.get(CACHE_KEY_HEADER) or body.user or None
        ),
    }
    return {k: v for k, v in kwargs.items() if v is not None}


def _include_usage(body: SamplingFields) -> bool:
    return bool(body.stream_options is not None and body.stream_options.include_usage)


def _tools(body: ChatCompletionRequest, kwargs: dict[str, Any]) -> None:
    """Tools, tool_choice and parallel_tool_calls into ``kwargs`` (neutral values left out,
    so a provider without tools serves a request that sends them)."""
    if body.tools:
        kwargs["tools"] = [t.model_dump(exclude_none=True) for t in body.tools]
    given = body.tool_choice
    choice = given.function.name if isinstance(given, ChatNamedToolChoice) else given
    if choice is not None and (body.tools or choice not in ("auto", "none")):
        kwargs["tool_choice"] = choice
    if body.parallel_tool_calls is not None and body.tools:
        kwargs["parallel_tool_calls"] = body.parallel_tool_calls


def _outputs(body: ChatCompletionRequest, kwargs: dict[str, Any]) -> None:
    """response_format and logprobs into ``kwargs``, neutral values left out."""
    fmt = body.response_format
    if isinstance(fmt, (JsonObjectFormat, JsonSchemaFormat)):
        kwargs["response_format"] = fmt.model_dump(by_alias=True, exclude_none=True)
    if body.logprobs:
        kwargs["logprobs"] = True
    if body.logprobs or body.top_logprobs:  # top_logprobs > 0 alone: the provider says why not
        if body.top_logprobs is not None:
            kwargs["top_logprobs"] = body.top_logprobs


def chat_params(
    body: ChatCompletionRequest, request: Request, state: ServerState
) -> GenerationParams:
    """A validated chat-completions body as provider kwargs."""
    max_tokens = body.max_completion_tokens
    if max_tokens is None:
        max_tokens = body.max_tokens
    kwargs = _sampling(body, request, state, max_tokens)
    kwargs["messages"] = [_message(m) for m in body.messages]
    _tools(body, kwargs)
    _outputs(body, kwargs)
    tokens = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    return GenerationParams(
        kwargs,
        bool(body.stream),
        _include_usage(body),
        rename_field({"max_output_tokens": tokens}),
    )


def completion_params(
    body: CompletionRequest, request: Request, state: ServerState
) -> GenerationParams:
    """A validated (legacy) completions body; the prompt becomes one user turn."""
    kwargs = _sampling(body, request, state, 16 if body.max_tokens is None else body.max_tokens)
    kwargs["prompt"] = body.prompt
    return GenerationParams(
        kwargs, bool(body.stream), _include_usage(body), rename_field(_COMPLETION_FIELDS)
    )


# ---------------------------------------------------------------------- endpoints
async def _answer(request: Request, state: ServerState, started: float, *, chat: bool) -> Response:
    body = await state.read_json(request)
    model = state.check_model(body.get("model"))
    if chat:
        params = chat_params(validate_body(ChatCompletionRequest, body, "openai"), request, state)
    else:
        params = completion_params(validate_body(CompletionRequest, body, "openai"), request, state)
    endpoint = "chat_completions" if chat else "completions"
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    created = int(time.time())
    if params.stream:
        run = open_stream(state, endpoint, params.kwargs, started=started, rename=params.rename)
        keepalive = state.settings.keepalive_interval
        first = await run.first(keepalive)
        writer = ChunkWriter(chat, rid, model, created)
        return EventStreamResponse(
            stream_events(run, first, writer, params.include_usage, keepalive), on_close=run.close
        )
    resp = await generate(
        state,
        endpoint,
        params.kwargs,
        receive=request.receive,
        started=started,
        rename=params.rename,
    )
    return JSONResponse((chat_json if chat else completion_json)(resp, rid, model, created))


async def chat_completions(request: Request, state: ServerState, started: float) -> Response:
    """POST /v1/chat/completions."""
    return await _answer(request, state, started, chat=True)


async def completions(request: Request, state: ServerState, started: float) -> Response:
    """POST /v1/completions."""
    return await _answer(request, state, started, chat=False)


async def list_models(request: Request, state: ServerState, started: float) -> Response:
    """GET /v1/models: the served model and its aliases."""
    state.require_provider()
    data = [
        {"id": mid, "object": "model", "created": state.created, "owned_by": "abstractcore"}
        for mid in state.model_ids()
    ]
    return JSONResponse({"object": "list", "data": data})
