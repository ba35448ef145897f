"""Typed values that cross the public API: messages, requests, responses, stream chunks."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "FinishReason",
    "GenerateResponse",
    "Message",
    "Role",
    "StreamChunk",
    "Timing",
    "TokenLogprob",
    "ToolCall",
    "ToolCallDelta",
    "TopLogprob",
    "Usage",
]

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "cancelled"]


class ToolCall(BaseModel):
    """A tool invocation requested by the model.

    ``arguments`` is the parsed JSON object; ``raw_arguments`` the text the model wrote
    (kept for logging and for a byte-exact replay to the backend). Built by hand for a
    conversation, give either: the other is derived.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    raw_arguments: str = ""

    @model_validator(mode="before")
    @classmethod
    def _fill_arguments(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        function = data.pop("function", None)
        if isinstance(function, dict) and data.pop("type", "function") == "function":
            # OpenAI's shape: {"id", "type": "function", "function": {"name", "arguments"}}
            data.setdefault("name", function.get("name"))
            data.setdefault("arguments", function.get("arguments"))
        args = data.get("arguments")
        if isinstance(args, str):  # the wire's shape: a JSON string
            data.setdefault("raw_arguments", args)
            try:
                parsed = json.loads(args) if args.strip() else {}
            except ValueError:
                parsed = {}
            data["arguments"] = parsed if isinstance(parsed, dict) else {}
        elif args is not None and not data.get("raw_arguments"):
            data["raw_arguments"] = json.dumps(args, ensure_ascii=False)
        elif args is None and not data.get("raw_arguments"):
            data["raw_arguments"] = "{}"
        return data


class ToolCallDelta(BaseModel):
    """A piece of a streamed tool call: the ``index``-th call of the response gets its id and
    name once and its arguments text in fragments (joined, they are ``raw_arguments``)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class TopLogprob(BaseModel):
    """One of the most likely tokens at a position."""

    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(BaseModel):
    """The log-probability of one generated token, and the top alternatives at its position."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class Message(BaseModel):
    """One chat turn.

    An assistant turn that called tools carries ``tool_calls`` (its ``content`` may be
    empty or omitted); each result goes back as ``Message(role="tool", tool_call_id=...,
    content=...)``, with ``name`` the tool's name (backends that match results by name, such
    as Ollama, need it; abstractcore fills it from the call when it is missing).
    """

    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _content_of_tool_calls(cls, data: Any) -> Any:
        # An assistant turn that only calls tools has no text: OpenAI sends content null.
        if isinstance(data, dict) and data.get("tool_calls") and data.get("content") is None:
            return {**data, "content": ""}
        if isinstance(data, dict) and "tool_calls" in data and data["tool_calls"] is None:
            return {k: v for k, v in data.items() if k != "tool_calls"}
        return data

    @model_validator(mode="after")
    def _check_role_fields(self) -> Message:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return self


class Usage(BaseModel):
    """Token accounting for one request.

    ``reported`` is False when the backend sent no usage at all (some OpenAI-compatible
    servers send none in their streams): the counts are then unknown, not zero, and read
    as 0 only for want of a value.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reported: bool = True

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            reported=self.reported and other.reported,
        )


class Timing(BaseModel):
    """Wall-clock timings for one request, in seconds (None where the backend cannot tell)."""

    queued_s: float | None = None
    ttft_s: float | None = None
    total_s: float | None = None
    decode_tokens_per_s: float | None = None


class GenerateResponse(BaseModel):
    """The complete result of one generation.

    ``parsed`` is the validated structured output (a ``response_model`` instance, or the
    JSON value for a ``response_format``); ``logprobs`` lists the generated tokens when
    ``logprobs=True`` was asked for.
    """

    content: str
    finish_reason: FinishReason
    usage: Usage = Field(default_factory=Usage)
    timing: Timing = Field(default_factory=Timing)
    model: str
    provider: str
    tool_calls: list[ToolCall] = Field(default_factory=list)
    parsed: Any = None
    logprobs: list[TokenLogprob] | None = None
    raw: Any = None

    def message(self) -> Message:
        """This answer as the assistant turn that continues the conversation."""
        return Message(role="assistant", content=self.content, tool_calls=list(self.tool_calls))


class StreamChunk(BaseModel):
    """One piece of a streamed generation; the last one carries finish_reason and usage.

    Tool calls stream as ``tool_call_deltas``; the last chunk carries them assembled (and
    validated) in ``tool_calls``, equal to what ``generate`` returns, and ``parsed`` for
    structured output. ``logprobs`` holds the tokens of this chunk's text.
    """

    content: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    timing: Timing | None = None
    model: str | None = None
    provider: str | None = None
    tool_call_deltas: list[ToolCallDelta] = Field(default_factory=list)
    tool_calls: list[ToolCall] = Field(default_factory=list)
    parsed: Any = None
    logprobs: list[TokenLogprob] | None = None
    raw: Any = None
