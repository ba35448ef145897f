"""The request bodies of the OpenAI API (``/v1/chat/completions``, ``/v1/completions``).

What the server implements is typed; what it does not is either refused as an unknown field
or, when OpenAI defines a neutral value, accepted only at that value (:class:`~.validation.
Neutral`). The field order is the order of the checks: when a body has several problems,
the first one reported is the first field here (unknown top-level fields before all).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, Tag, WithJsonSchema, model_validator

from ..providers.features import MAX_TOP_LOGPROBS
from .validation import (
    Neutral,
    RequestModel,
    by_key,
    check_object_schema,
    check_schema,
    check_tool_name,
    choice,
    field_error,
)

__all__ = [
    "ChatAssistantMessage",
    "ChatCompletionRequest",
    "ChatSystemMessage",
    "ChatTool",
    "ChatToolMessage",
    "ChatUserMessage",
    "CompletionRequest",
    "MAX_STOP",
    "SamplingFields",
]

#: Stop sequences a request may give.
MAX_STOP = 16


# ---------------------------------------------------------------------- shared fields
def _stop_list(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    if value is not None and not isinstance(value, list):
        raise field_error("must be a string or a list of strings")
    return value


Stop = Annotated[
    Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP)] | None,
    BeforeValidator(_stop_list),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1},
                    "maxItems": MAX_STOP,
                },
                {"type": "null"},
            ],
            "description": "Sequences where generation stops (not included in the output).",
        }
    ),
]
Temperature = Annotated[float | None, Field(ge=0.0, le=2.0)]
TopP = Annotated[float | None, Field(gt=0.0, le=1.0)]
CacheKey = Annotated[
    str | None,
    Field(
        min_length=1,
        description="Reuse the prompt cache of this conversation (also the "
        "X-Prompt-Cache-Key header).",
    ),
]


def _only_one(hint: str = "") -> Callable[[int | None], int | None]:
    def check(value: int | None) -> int | None:
        if value is not None and value > 1:
            raise field_error("> 1 is not supported" + (f"; {hint}" if hint else ""))
        return value

    return check


class StreamOptions(RequestModel):
    """Options of a streamed response."""

    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class SamplingFields(RequestModel):
    """Fields both endpoints share (in the order they are checked)."""

    frequency_penalty: Annotated[Any, Neutral(0, 0.0)] = None
    presence_penalty: Annotated[Any, Neutral(0, 0.0)] = None
    logit_bias: Annotated[Any, Neutral({})] = None
    model: Annotated[
        str | None,
        Field(
            description="The served model's id or an alias; optional: this server serves one model."
        ),
    ] = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: Annotated[int | None, Field(ge=1), AfterValidator(_only_one("send n separate requests"))] = (
        None
    )
    temperature: Temperature = None
    top_p: TopP = None
    top_k: Annotated[int | None, Field(ge=0, description="Extension: top-k sampling.")] = None
    seed: int | None = None
    stop: Stop = None
    prompt_cache_key: CacheKey = None
    user: Annotated[
        str | None,
        Field(description="The prompt-cache key when neither field nor header gives one."),
    ] = None

    @model_validator(mode="after")
    def _check_options(self) -> Any:
        if self.stream_options is not None and not self.stream:
            raise field_error("is only allowed when 'stream' is true", "stream_options")
        return self


# ---------------------------------------------------------------------- messages
class ChatTextPart(RequestModel):
    """A text part of a message's content."""

    type: Literal["text"]
    text: str


def _content_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "<text>"
    return "<parts>" if isinstance(value, list) else None


ChatContent = Annotated[
    Annotated[str, Tag("<text>")] | Annotated[list[ChatTextPart], Tag("<parts>")],
    choice(
        "chat_content",
        _content_kind,
        key=None,
        what="content",
        supported="a string or a list of text parts",
    ),
]


class ChatSystemMessage(RequestModel):
    """Instructions (``developer`` is the newer name of ``system``)."""

    role: Literal["system", "developer"]
    content: ChatContent
    name: str | None = None


class ChatUserMessage(RequestModel):
    """A user turn."""

    role: Literal["user"]
    content: ChatContent
    name: str | None = None


class ChatFunctionCall(RequestModel):
    """The function a tool call invokes; ``arguments`` is the JSON text the model wrote."""

    name: str
    arguments: str


class ChatToolCall(RequestModel):
    """A tool call of an earlier assistant turn."""

    id: Annotated[str, Field(min_length=1)]
    type: Literal["function"]
    function: ChatFunctionCall


class ChatAssistantMessage(RequestModel):
    """An earlier answer; ``content`` may be null when it only called tools."""

    role: Literal["assistant"]
    content: ChatContent | None = None
    name: str | None = None
    tool_calls: list[ChatToolCall] | None = None
    refusal: Annotated[Any, Neutral()] = None
    audio: Annotated[Any, Neutral()] = None

    @model_validator(mode="after")
    def _needs_content_or_calls(self) -> Any:
        if self.content is None and not self.tool_calls:
            raise field_error("is required unless the message has tool_calls", "content")
        return self


class ChatToolMessage(RequestModel):
    """A tool's result, answering the call ``tool_call_id``."""

    role: Literal["tool"]
    content: ChatContent
    tool_call_id: Annotated[str, Field(min_length=1)]


_ROLE_TAGS = {
    "system": "<system>",
    "developer": "<system>",
    "user": "<user>",
    "assistant": "<assistant>",
    "tool": "<tool>",
}
ChatMessage = Annotated[
    Annotated[ChatSystemMessage, Tag("<system>")]
    | Annotated[ChatUserMessage, Tag("<user>")]
    | Annotated[ChatAssistantMessage, Tag("<assistant>")]
    | Annotated[ChatToolMessage, Tag("<tool>")],
    choice(
        "chat_role",
        by_key("role", _ROLE_TAGS),
        key="role",
        what="role",
        supported=", ".join(_ROLE_TAGS),
    ),
]


# ---------------------------------------------------------------------- tools
class ChatFunction(RequestModel):
    """A function the model may call: its name, what it does, the JSON schema of its
    arguments (an object), and whether the backend must guarantee that schema."""

    name: Annotated[str, AfterValidator(check_tool_name)]
    description: str | None = None
    parameters: Annotated[dict[str, Any] | None, AfterValidator(check_object_schema)] = None
    strict: bool | None = None


class ChatTool(RequestModel):
    """A function tool."""

    type: Literal["function"]
    function: ChatFunction


class ChatNamedFunction(RequestModel):
    """The tool named by a ``tool_choice`` object."""

    name: str


class ChatNamedToolChoice(RequestModel):
    """``tool_choice`` forcing one function."""

    type: Literal["function"]
    function: ChatNamedFunction


def _tool_choice_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "<mode>"
    return "<named>" if isinstance(value, dict) else None


ChatToolChoice = Annotated[
    Annotated[Literal["auto", "none", "required"], Tag("<mode>")]
    | Annotated[ChatNamedToolChoice, Tag("<named>")],
    choice(
        "chat_tool_choice",
        _tool_choice_kind,
        key=None,
        what="tool_choice",
        supported="'auto', 'none', 'required' or "
        '{"type": "function", "function": {"name": ...}}',
    ),
]


# ---------------------------------------------------------------------- response_format
class TextFormat(RequestModel):
    """Plain text (the default)."""

    type: Literal["text"]


class JsonObjectFormat(RequestModel):
    """Any JSON object."""

    type: Literal["json_object"]


class JsonSchemaSpec(RequestModel):
    """The schema the answer must match."""

    name: Annotated[str, AfterValidator(check_tool_name)]
    description: str | None = None
    schema_: Annotated[dict[str, Any] | None, AfterValidator(check_schema)] = Field(
        default=None, alias="schema"
    )
    strict: bool | None = None


class JsonSchemaFormat(RequestModel):
    """JSON matching ``json_schema.schema``."""

    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


_FORMAT_TAGS = {"text": "<text>", "json_object": "<json_object>", "json_schema": "<json_schema>"}
ChatResponseFormat = Annotated[
    Annotated[TextFormat, Tag("<text>")]
    | Annotated[JsonObjectFormat, Tag("<json_object>")]
    | Annotated[JsonSchemaFormat, Tag("<json_schema>")],
    choice(
        "response_format",
        by_key("type", _FORMAT_TAGS),
        key="type",
        what="response_format type",
        supported=", ".join(_FORMAT_TAGS),
    ),
]


# ---------------------------------------------------------------------- the bodies
class ChatCompletionRequest(SamplingFields):
    """The body of ``POST /v1/chat/completions``."""

    modalities: Annotated[Any, Neutral(["text"])] = None
    max_completion_tokens: Annotated[int | None, Field(ge=1)] = None
    max_tokens: Annotated[int | None, Field(ge=1, description="Legacy name.")] = None
    safety_identifier: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    tools: list[ChatTool] | None = None
    tool_choice: ChatToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ChatResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int | None, Field(ge=0, le=MAX_TOP_LOGPROBS)] = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)]

    @model_validator(mode="after")
    def _check_conversation(self) -> Any:
        if all(isinstance(m, ChatSystemMessage) for m in self.messages):
            raise field_error("must contain at least one user or assistant message", "messages")
        names = [t.function.name for t in self.tools or []]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise field_error(
                    "repeats the tool name {got}; names must be unique",
                    "tools",
                    i,
                    "function",
                    "name",
                    got=repr(name),
                )
        calls: set[str] = set()
        for i, m in enumerate(self.messages):
            if isinstance(m, ChatAssistantMessage):
                calls.update(c.id for c in m.tool_calls or [])
            elif isinstance(m, ChatToolMessage) and m.tool_call_id not in calls:
                raise field_error(
                    "answers no tool call of an earlier assistant message (got {got})",
                    "messages",
                    i,
                    "tool_call_id",
                    got=repr(m.tool_call_id),
                )
        return self


def _one_prompt(value: Any) -> Any:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if not isinstance(value, str) or not value:
        raise field_error("must be a non-empty string (token arrays and batches are not supported)")
    return value


class CompletionRequest(SamplingFields):
    """The body of ``POST /v1/completions`` (the prompt is sent as one user turn)."""

    logprobs: Annotated[Any, Neutral(0)] = None
    echo: Annotated[Any, Neutral(False)] = None
    suffix: Annotated[Any, Neutral("")] = None
    best_of: Annotated[int | None, Field(ge=1), AfterValidator(_only_one())] = None
    max_tokens: Annotated[int | None, Field(ge=1, description="Default 16.")] = None
    prompt: Annotated[
        str,
        BeforeValidator(_one_prompt),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "minLength": 1},
                    {
                        "type": "array",
                        "items": {"type": "string", "minLength": 1},
                        "minItems": 1,
                        "maxItems": 1,
                    },
                ]
            }
        ),
    ]
