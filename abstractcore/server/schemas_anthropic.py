"""The request body of the Anthropic Messages API (``/v1/messages``).

Content blocks the server implements are typed (text, ``tool_use`` in assistant turns,
``tool_result`` in user turns); any other block type is refused naming
``messages.<i>.content.<j>.type``. As in :mod:`.schemas_openai`, the field order is the
order of the checks.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, Tag, model_validator

from .schemas_openai import MAX_STOP
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
    "AnthropicAssistantMessage",
    "AnthropicTextBlock",
    "AnthropicTool",
    "AnthropicToolResultBlock",
    "AnthropicToolUseBlock",
    "AnthropicUserMessage",
    "MessagesRequest",
]

CacheControl = Annotated[
    dict[str, Any] | None,
    Field(description="A prompt-caching hint; accepted, the server's prompt cache needs none."),
]


def _content_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "<text>"
    return "<blocks>" if isinstance(value, list) else None


# ---------------------------------------------------------------------- content blocks
class AnthropicTextBlock(RequestModel):
    """A text block."""

    type: Literal["text"]
    text: str
    cache_control: CacheControl = None
    citations: Annotated[Any, Neutral([])] = None


TextContent = Annotated[
    Annotated[str, Tag("<text>")] | Annotated[list[AnthropicTextBlock], Tag("<blocks>")],
    choice(
        "anthropic_text",
        _content_kind,
        key=None,
        what="content",
        supported="a string or a list of text blocks",
    ),
]


class AnthropicToolUseBlock(RequestModel):
    """A tool call of an earlier assistant turn."""

    type: Literal["tool_use"]
    id: Annotated[str, Field(min_length=1)]
    name: str
    input: dict[str, Any]
    cache_control: CacheControl = None


class AnthropicToolResultBlock(RequestModel):
    """A tool's result, answering the call ``tool_use_id``; ``is_error`` says it failed."""

    type: Literal["tool_result"]
    tool_use_id: Annotated[str, Field(min_length=1)]
    content: TextContent | None = None
    is_error: bool | None = None
    cache_control: CacheControl = None


UserBlock = Annotated[
    Annotated[AnthropicTextBlock, Tag("<text>")]
    | Annotated[AnthropicToolResultBlock, Tag("<tool_result>")],
    choice(
        "anthropic_user_block",
        by_key("type", {"text": "<text>", "tool_result": "<tool_result>"}),
        key="type",
        what="content block type",
        supported="text, tool_result",
    ),
]
AssistantBlock = Annotated[
    Annotated[AnthropicTextBlock, Tag("<text>")]
    | Annotated[AnthropicToolUseBlock, Tag("<tool_use>")],
    choice(
        "anthropic_assistant_block",
        by_key("type", {"text": "<text>", "tool_use": "<tool_use>"}),
        key="type",
        what="content block type",
        supported="text, tool_use",
    ),
]


# ---------------------------------------------------------------------- messages
class AnthropicUserMessage(RequestModel):
    """A user turn: text, and the results of the tools the previous turn called."""

    role: Literal["user"]
    content: Annotated[
        Annotated[str, Tag("<text>")] | Annotated[list[UserBlock], Tag("<blocks>")],
        choice(
            "anthropic_user_content",
            _content_kind,
            key=None,
            what="content",
            supported="a string or a list of content blocks",
        ),
    ]


class AnthropicAssistantMessage(RequestModel):
    """An earlier answer: text and tool calls."""

    role: Literal["assistant"]
    content: Annotated[
        Annotated[str, Tag("<text>")] | Annotated[list[AssistantBlock], Tag("<blocks>")],
        choice(
            "anthropic_assistant_content",
            _content_kind,
            key=None,
            what="content",
            supported="a string or a list of content blocks",
        ),
    ]


AnthropicMessage = Annotated[
    Annotated[AnthropicUserMessage, Tag("<user>")]
    | Annotated[AnthropicAssistantMessage, Tag("<assistant>")],
    choice(
        "anthropic_role",
        by_key("role", {"user": "<user>", "assistant": "<assistant>"}),
        key="role",
        what="role",
        supported="user, assistant",
    ),
]


# ---------------------------------------------------------------------- tools
class AnthropicTool(RequestModel):
    """A client tool: its name, what it does, the JSON schema of its input (an object)."""

    type: Literal["custom"] | None = None
    name: Annotated[str, AfterValidator(check_tool_name)]
    description: str | None = None
    input_schema: Annotated[dict[str, Any], AfterValidator(check_object_schema)]
    strict: bool | None = None
    cache_control: CacheControl = None


class ToolChoiceAuto(RequestModel):
    """The model decides whether to call tools."""

    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(RequestModel):
    """The model must call a tool."""

    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(RequestModel):
    """The model must call the tool ``name``."""

    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(RequestModel):
    """The model must not call tools."""

    type: Literal["none"]


_CHOICE_TAGS = {"auto": "<auto>", "any": "<any>", "tool": "<tool>", "none": "<none>"}
AnthropicToolChoice = Annotated[
    Annotated[ToolChoiceAuto, Tag("<auto>")]
    | Annotated[ToolChoiceAny, Tag("<any>")]
    | Annotated[ToolChoiceTool, Tag("<tool>")]
    | Annotated[ToolChoiceNone, Tag("<none>")],
    choice(
        "anthropic_tool_choice",
        by_key("type", _CHOICE_TAGS),
        key="type",
        what="tool_choice type",
        supported=", ".join(_CHOICE_TAGS),
    ),
]


# ---------------------------------------------------------------------- structured output
class JsonOutputFormat(RequestModel):
    """Answer with JSON matching ``schema``."""

    type: Literal["json_schema"]
    schema_: Annotated[dict[str, Any], AfterValidator(check_schema)] = Field(alias="schema")


class OutputConfig(RequestModel):
    """How the answer is shaped."""

    format: JsonOutputFormat | None = None
    effort: Annotated[Any, Neutral()] = None


class AnthropicMetadata(RequestModel):
    """Request metadata."""

    user_id: str | None = None


# ---------------------------------------------------------------------- the body
class MessagesRequest(RequestModel):
    """The body of ``POST /v1/messages``."""

    thinking: Annotated[Any, Neutral({"type": "disabled"})] = None
    cache_control: CacheControl = None
    model: Annotated[
        str | None,
        Field(
            description="The served model's id or an alias; optional: this server serves one model."
        ),
    ] = None
    max_tokens: Annotated[int, Field(ge=1)]
    metadata: AnthropicMetadata | None = None
    temperature: Annotated[float | None, Field(ge=0.0, le=1.0)] = None
    top_p: Annotated[float | None, Field(gt=0.0, le=1.0)] = None
    top_k: Annotated[int | None, Field(ge=0)] = None
    stop_sequences: (
        Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP)] | None
    ) = None
    stream: bool | None = None
    prompt_cache_key: Annotated[
        str | None,
        Field(
            min_length=1,
            description="Extension: reuse the prompt cache of this conversation (also the "
            "X-Prompt-Cache-Key header).",
        ),
    ] = None
    service_tier: str | None = None
    system: TextContent | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None
    output_config: OutputConfig | None = None
    messages: Annotated[list[AnthropicMessage], Field(min_length=1)]

    @model_validator(mode="after")
    def _check_conversation(self) -> Any:
        names = [t.name for t in self.tools or []]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise field_error(
                    "repeats the tool name {got}; names must be unique",
                    "tools",
                    i,
                    "name",
                    got=repr(name),
                )
        calls: set[str] = set()
        for i, m in enumerate(self.messages):
            if isinstance(m.content, str):
                continue
            for j, block in enumerate(m.content):
                if isinstance(block, AnthropicToolUseBlock):
                    calls.add(block.id)
                elif isinstance(block, AnthropicToolResultBlock) and block.tool_use_id not in calls:
                    raise field_error(
                        "answers no tool_use block of an earlier assistant message (got {got})",
                        "messages",
                        i,
                        "content",
                        j,
                        "tool_use_id",
                        got=repr(block.tool_use_id),
                    )
        return self
