"""One exception tree for every provider.

Errors are classified from status codes and typed exceptions in one place per transport,
never by matching message strings, and always raised ``from`` the lower-level cause.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "AbstractCoreError",
    "AuthenticationError",
    "ConfigurationError",
    "ContextLengthError",
    "GenerationCancelledError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "OverloadedError",
    "ProviderAPIError",
    "ProviderError",
    "ProviderUnavailableError",
    "RateLimitError",
    "RequestTimeoutError",
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


class ModelNotFoundError(ProviderError):
    """The named model does not exist on the backend (or cannot be fetched offline)."""


class ContextLengthError(InvalidRequestError):
    """The prompt (plus requested output) does not fit the model's context window."""


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
