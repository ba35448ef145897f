"""Typed values that cross the public API: messages, requests, responses, stream chunks."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "FinishReason",
    "GenerateResponse",
    "GenerationRequest",
    "Message",
    "Role",
    "StreamChunk",
    "Timing",
    "ToolCall",
    "Usage",
]

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "cancelled"]


class Message(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str
    name: str | None = None
    tool_call_id: str | None = None


class ToolCall(BaseModel):
    """A tool invocation requested by the model."""

    id: str
    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class Usage(BaseModel):
    """Token accounting for one request."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


class Timing(BaseModel):
    """Wall-clock timings for one request, in seconds (None where the backend cannot tell)."""

    queued_s: float | None = None
    ttft_s: float | None = None
    total_s: float | None = None
    decode_tokens_per_s: float | None = None


class GenerateResponse(BaseModel):
    """The complete result of one generation."""

    content: str
    finish_reason: FinishReason
    usage: Usage = Field(default_factory=Usage)
    timing: Timing = Field(default_factory=Timing)
    model: str
    provider: str
    tool_calls: list[ToolCall] = Field(default_factory=list)
    raw: Any = None


class StreamChunk(BaseModel):
    """One piece of a streamed generation; the last one carries finish_reason and usage."""

    content: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    timing: Timing | None = None
    model: str | None = None
    provider: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    raw: Any = None


class GenerationRequest(BaseModel):
    """A validated, provider-neutral request: what every provider maps to its wire format.

    Built by ``BaseProvider`` from the public keyword arguments; providers never see raw user
    input.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    messages: list[Message]
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    prompt_cache_key: str | None = None
    timeout: float | None = None
    tools: list[dict[str, Any]] | None = None
    response_model: Any = None
    extra: dict[str, Any] = Field(default_factory=dict)
