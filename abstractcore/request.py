"""GenerationRequest: the validated, provider-neutral request every provider maps to its wire.

Kept apart from :mod:`abstractcore.types` because it holds :class:`~abstractcore.tools.Tool`
and :class:`~abstractcore.structured.ResponseFormat`, whose modules build on those types.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .structured import ResponseFormat
from .tools.definition import Tool
from .types import Message

__all__ = ["GenerationRequest", "ToolChoice"]

ToolChoice = Literal["auto", "none", "required"] | str
"""``"auto"``, ``"none"``, ``"required"``, or the name of the one tool the model must call."""


class GenerationRequest(BaseModel):
    """A validated request. Built by ``BaseProvider`` from the public keyword arguments;
    providers never see raw user input. ``top_logprobs`` is set (0-20) exactly when
    ``logprobs`` is."""

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
    tools: list[Tool] = Field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    def tool(self, name: str) -> Tool | None:
        """The tool called ``name`` in this request, if any."""
        return next((t for t in self.tools if t.name == name), None)
