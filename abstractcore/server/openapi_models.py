"""The shapes of the server's responses, for its OpenAPI document (documentation only: the
handlers write JSON directly, and the tests check that what they write matches these).

Streams are described event by event, as OpenAPI 3.1 tools read ``text/event-stream``: each
event's ``data`` is JSON of one of the ``*Chunk`` / ``*Event`` models (or OpenAI's final
``[DONE]``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

__all__ = [
    "ANTHROPIC_EVENTS",
    "AnthropicErrorBody",
    "ChatCompletion",
    "ChatCompletionChunk",
    "HealthBody",
    "MessageObject",
    "ModelList",
    "OPENAI_CHAT_EVENTS",
    "OPENAI_TEXT_EVENTS",
    "OpenAIErrorBody",
    "TextCompletion",
]


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---------------------------------------------------------------------- errors
class OpenAIErrorDetail(_Out):
    """What went wrong; ``param`` names the field at fault."""

    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(_Out):
    """An OpenAI error."""

    error: OpenAIErrorDetail


class AnthropicErrorDetail(_Out):
    """What went wrong (the message names the field at fault)."""

    type: str
    message: str


class AnthropicErrorBody(_Out):
    """An Anthropic error."""

    type: Literal["error"]
    error: AnthropicErrorDetail


# ---------------------------------------------------------------------- OpenAI
class PromptTokensDetails(_Out):
    """Prompt tokens reused from the prompt cache."""

    cached_tokens: int


class CompletionUsage(_Out):
    """Token accounting."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class FunctionCallOut(_Out):
    """The function called; ``arguments`` is the JSON text the model wrote."""

    name: str
    arguments: str


class ToolCallOut(_Out):
    """A tool call."""

    id: str
    type: Literal["function"]
    function: FunctionCallOut


class AssistantMessageOut(_Out):
    """The answer; ``content`` is null when the model only called tools."""

    role: Literal["assistant"]
    content: str | None
    refusal: None
    tool_calls: list[ToolCallOut] | None = None


class TopLogprobOut(_Out):
    """One of the most likely tokens at a position."""

    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(TopLogprobOut):
    """A generated token, and the most likely ones at its position."""

    top_logprobs: list[TopLogprobOut]


class ChoiceLogprobs(_Out):
    """The generated tokens' log-probabilities (with ``logprobs: true``)."""

    content: list[TokenLogprobOut] | None
    refusal: None


FinishReasonOut = Literal["stop", "length", "tool_calls"]


class ChatChoice(_Out):
    """The one choice."""

    index: int
    message: AssistantMessageOut
    logprobs: ChoiceLogprobs | None
    finish_reason: FinishReasonOut


class ChatCompletion(_Out):
    """A ``chat.completion`` (with ``stream: true``, ``chat.completion.chunk`` events)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage
    system_fingerprint: None


class TextChoice(_Out):
    """The one choice."""

    index: int
    text: str
    logprobs: None
    finish_reason: FinishReasonOut


class TextCompletion(_Out):
    """A ``text_completion`` (also the object of each streamed event)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: CompletionUsage
    system_fingerprint: None


class ModelCard(_Out):
    """A served model id (the model or one of its aliases)."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(_Out):
    """The served model and its aliases."""

    object: Literal["list"]
    data: list[ModelCard]


# ---------------------------------------------------------------------- Anthropic
class TextBlockOut(_Out):
    """Text."""

    type: Literal["text"]
    text: str


class ToolUseBlockOut(_Out):
    """A tool call."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class MessageUsage(_Out):
    """Token accounting; cache reads are not included in ``input_tokens``."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int


class MessageObject(_Out):
    """A ``message`` (with ``stream: true``, the Messages stream events)."""

    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[TextBlockOut | ToolUseBlockOut]
    stop_reason: Literal["end_turn", "max_tokens", "tool_use"]
    stop_sequence: None
    usage: MessageUsage


# ---------------------------------------------------------------------- probes
class HealthBody(_Out):
    """Readiness: 200 once the model serves; 503 before, after it failed to load, and from
    the moment shutdown begins (``draining``)."""

    status: Literal["ok", "loading", "error", "draining"]
    ready: bool
    model: str | None
    provider: str | None
    in_flight: int
    active: int
    queued: int
    engine: dict[str, Any] | None


# ---------------------------------------------------------------------- OpenAI streams
class ChunkFunction(_Out):
    """A piece of a streamed call: the name once, then fragments of the arguments text."""

    name: str | None = None
    arguments: str | None = None


class ChunkToolCall(_Out):
    """A piece of the ``index``-th tool call (its id and type come once, first)."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ChunkFunction | None = None


class ChunkDelta(_Out):
    """What the chunk adds to the answer."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ChunkToolCall] | None = None


class ChunkChoice(_Out):
    """The one choice of a chunk."""

    index: int
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None
    finish_reason: FinishReasonOut | None


class ChatCompletionChunk(_Out):
    """One event of a streamed chat completion; with ``include_usage``, the last one has no
    choices and the usage."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None
    system_fingerprint: None


class TextChunkChoice(_Out):
    """The one choice of a streamed text completion event."""

    index: int
    text: str
    logprobs: None
    finish_reason: FinishReasonOut | None


class TextCompletionChunk(_Out):
    """One event of a streamed text completion."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChunkChoice]
    usage: CompletionUsage | None = None
    system_fingerprint: None


# ---------------------------------------------------------------------- Anthropic streams
class MessageStartEvent(_Out):
    """The message, empty: content and stop reason follow."""

    type: Literal["message_start"]
    message: dict[str, Any]


class ContentBlockStartEvent(_Out):
    """A content block opens at ``index``."""

    type: Literal["content_block_start"]
    index: int
    content_block: TextBlockOut | ToolUseBlockOut


class TextDelta(_Out):
    """More text."""

    type: Literal["text_delta"]
    text: str


class InputJsonDelta(_Out):
    """A fragment of a tool call's input, as JSON text."""

    type: Literal["input_json_delta"]
    partial_json: str


class ContentBlockDeltaEvent(_Out):
    """More of the block at ``index``."""

    type: Literal["content_block_delta"]
    index: int
    delta: TextDelta | InputJsonDelta


class ContentBlockStopEvent(_Out):
    """The block at ``index`` is complete."""

    type: Literal["content_block_stop"]
    index: int


class StopDelta(_Out):
    """Why the message ended."""

    stop_reason: Literal["end_turn", "max_tokens", "tool_use"]
    stop_sequence: None


class MessageDeltaEvent(_Out):
    """The stop reason and the usage."""

    type: Literal["message_delta"]
    delta: StopDelta
    usage: MessageUsage


class MessageStopEvent(_Out):
    """The end of the stream."""

    type: Literal["message_stop"]


class PingEvent(_Out):
    """A keep-alive."""

    type: Literal["ping"]


OPENAI_CHAT_EVENTS: tuple[type[BaseModel], ...] = (ChatCompletionChunk, OpenAIErrorBody)
OPENAI_TEXT_EVENTS: tuple[type[BaseModel], ...] = (TextCompletionChunk, OpenAIErrorBody)
ANTHROPIC_EVENTS: tuple[type[BaseModel], ...] = (
    MessageStartEvent,
    ContentBlockStartEvent,
    ContentBlockDeltaEvent,
    ContentBlockStopEvent,
    MessageDeltaEvent,
    MessageStopEvent,
    PingEvent,
    AnthropicErrorBody,
)
