"""One exception tree for every provider.

Errors are classified from status codes and typed exceptions in one place per transport,
never by matching message strings, and always raised ``from`` the lower-level cause.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .tools.loop import ToolRun
    from .types import GenerateResponse

__all__ = [
    "AbstractCoreError",
    "AuthenticationError",
    "ConfigurationError",
    "ContextLengthError",
    "GenerationCancelledError",
    "InvalidRequestError",
    "MaxTurnsExceededError",
    "MemoryBudgetError",
    "ModelNotFoundError",
    "OverloadedError",
    "ProviderAPIError",
    "ProviderError",
    "ProviderUnavailableError",
    "RateLimitError",
    "RequestTimeoutError",
    "StructuredOutputError",
    "ToolCallError",
    "UnsupportedFeatureError",
]


class AbstractCoreError(Exception):
    """Base class of every error abstractcore raises."""


class ConfigurationError(AbstractCoreError):
    """A setting is missing or invalid; names the setting and where it could come from."""

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class ProviderError(AbstractCoreError):
    """A backend refused or failed a request.

    Carries what the backend said (status, body, headers) so callers can log or act on it.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status_code: int | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status_code = status_code
        self.body = body
        self.headers: dict[str, str] = dict(headers or {})


class AuthenticationError(ProviderError):
    """The backend rejected the credentials (HTTP 401/403)."""


class RateLimitError(ProviderError):
    """The backend asked us to slow down (HTTP 429); ``retry_after`` is in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class InvalidRequestError(ProviderError):
    """The request itself is wrong; ``field`` names the offending parameter when known."""

    def __init__(self, message: str, *, field: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.field = field


class UnsupportedFeatureError(InvalidRequestError):
    """The backend cannot do what ``field`` asks (tools, structured output, logprobs...);
    raised before any request is sent, never silently ignored."""

    def __init__(self, message: str, *, field: str, **kw: Any) -> None:
        super().__init__(message, field=field, **kw)


class ModelNotFoundError(ProviderError):
    """The named model does not exist on the backend (or cannot be fetched offline)."""


class ContextLengthError(InvalidRequestError):
    """The prompt (plus requested output) does not fit the model's context window."""


class MemoryBudgetError(ContextLengthError):
    """The request's KV cache (prompt plus requested output) can never fit the memory the
    engine may give running requests (``kv_cache_bytes``); refused before it is queued."""


class ProviderUnavailableError(ProviderError):
    """The backend could not be reached (connection refused, DNS, dropped before a reply)."""


class ProviderAPIError(ProviderError):
    """The backend answered with a server error or a malformed / truncated response."""


class RequestTimeoutError(ProviderError, TimeoutError):
    """The request's ``timeout`` elapsed before it completed."""


class OverloadedError(ProviderError):
    """The backend is at capacity (queue full, queue wait timed out, HTTP 529/503 overload)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class GenerationCancelledError(AbstractCoreError):
    """The generation was cancelled before it finished."""


class StructuredOutputError(AbstractCoreError):
    """The model's answer is not the structured output that was asked for (after the one
    retry with the validation errors fed back). ``raw`` is the text it wrote, ``errors``
    what is wrong with it, ``response`` the last response (its ``finish_reason`` says
    whether the output was cut off at ``max_output_tokens``)."""

    def __init__(
        self,
        message: str,
        *,
        raw: str,
        errors: str,
        response: GenerateResponse | None = None,
    ) -> None:
        super().__init__(message)
        self.raw = raw
        self.errors = errors
        self.response = response


class ToolCallError(AbstractCoreError):
    """The model called a tool with arguments that are not JSON or do not match the tool's
    schema, or called a tool that was not offered. ``raw`` is the arguments text it wrote,
    ``tool_name`` the tool, ``errors`` what is wrong, ``response`` the whole response."""

    def __init__(
        self,
        message: str,
        *,
        tool_name: str,
        raw: str,
        errors: str,
        response: GenerateResponse | None = None,
    ) -> None:
        super().__init__(message)
        self.tool_name = tool_name
        self.raw = raw
        self.errors = errors
        self.response = response


class MaxTurnsExceededError(AbstractCoreError):
    """The tool loop reached ``max_turns`` while the model still asked for tools;
    ``result`` holds the transcript so far."""

    def __init__(self, message: str, *, result: ToolRun) -> None:
        super().__init__(message)
        self.result = result
