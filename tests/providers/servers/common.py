"""Pieces every fake dialect uses: SSE framing, error kinds, content as text, BadRequest."""

from __future__ import annotations

import json
from typing import Any

# kind -> (OpenAI type, OpenAI code, Anthropic type)
KINDS: dict[str, tuple[str, str | None, str]] = {
    "rate_limit": ("requests", "rate_limit_exceeded", "rate_limit_error"),
    "server": ("server_error", None, "api_error"),
    "auth": ("invalid_request_error", "invalid_api_key", "authentication_error"),
    "permission": (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "permission_error",
    ),
    "not_found": ("invalid_request_error", "model_not_found", "not_found_error"),
    "bad_request": ("invalid_request_error", "invalid_value", "invalid_request_error"),
    "context": ("invalid_request_error", "context_length_exceeded", "invalid_request_error"),
    "overloaded": ("server_error", None, "overloaded_error"),
}


class BadRequest(Exception):
    """A request the real API would refuse with 400; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def sse(data: Any, event: str | None = None) -> bytes:
    """One Server-Sent Event."""
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


def text_of(content: Any) -> str:
    """Message content as text (Anthropic and OpenAI content may be a list of blocks)."""
    if content is None:
        return ""
    if isinstance(content, list):
        return " ".join(text_of(b.get("text") or b.get("content") or "") for b in content)
    return str(content)


def require(condition: bool, message: str, param: str | None = None) -> None:
    """Raise BadRequest unless ``condition``."""
    if not condition:
        raise BadRequest(message, param)


def check_tool_name(name: Any, where: str) -> str:
    """A tool name as OpenAI and Anthropic accept it."""
    ok = isinstance(name, str) and 0 < len(name) <= 64
    ok = ok and all(c.isascii() and (c.isalnum() or c in "_-") for c in name)
    require(ok, f"{where}: string does not match pattern '^[a-zA-Z0-9_-]{{1,64}}$'", where)
    return str(name)
