"""The three wire formats as a server speaks them: requests checked and read into the fake
model's neutral :class:`~.model.Ask`, replies, stream frames and error bodies.

The fake model (:mod:`.model`) answers ``"Echo: <last user message>"`` one word per token, so
tests can predict content, token counts and ``length`` truncation exactly; it calls tools,
answers tool results and writes structured output by the rules in :mod:`.model`.
"""

from __future__ import annotations

from typing import Any, Protocol

from .anthropic_dialect import AnthropicDialect
from .common import BadRequest
from .model import Ask, Reply
from .ollama_dialect import OllamaDialect
from .openai_dialect import OpenAIDialect

__all__ = ["DIALECTS", "Dialect", "Reply"]


class Dialect(Protocol):
    """One API as seen from the server."""

    name: str
    path: str
    stream_type: str
    overloaded_status: int
    first_content_frame: int

    def ask(self, body: dict[str, Any]) -> Ask: ...
    def is_stream(self, body: dict[str, Any]) -> bool: ...
    def full(self, reply: Reply) -> dict[str, Any]: ...
    def frames(self, reply: Reply, body: dict[str, Any]) -> list[bytes]: ...
    def error(self, kind: str, message: str) -> dict[str, Any]: ...
    def bad_request(self, exc: BadRequest) -> dict[str, Any]: ...
    def error_frame(self, kind: str, message: str) -> bytes: ...
    def garbage_frame(self) -> bytes: ...
    def wrong_shape_frame(self) -> bytes: ...


DIALECTS: dict[str, Dialect] = {
    d.name: d for d in (OpenAIDialect(), AnthropicDialect(), OllamaDialect())
}
