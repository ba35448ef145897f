"""HTTP errors of the server, rendered in each API's own shape.

One exception (:class:`APIError`) carries status, message and the offending field; it is
built from abstractcore's exception tree in one place (:func:`from_exception`) and rendered
as an OpenAI body (``{"error": {...}}``) or an Anthropic body (``{"type": "error", ...}``)
depending on the endpoint. A 500 never carries the cause's text: internals stay in the log.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

from .. import errors as core

__all__ = [
    "APIError",
    "ClientDisconnected",
    "Flavor",
    "Rename",
    "anthropic_error_body",
    "error_body",
    "from_exception",
    "openai_error_body",
]

logger = logging.getLogger("abstractcore.server")

Flavor = Literal["openai", "anthropic"]
#: Turns a provider-side field name (``max_output_tokens``, ``tools[0].parameters``) into the
#: name the client used (``max_tokens``, ``tools.0.input_schema``).
Rename = Callable[[str], str]

# status -> (OpenAI error type, Anthropic error type)
_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("authentication_error", "authentication_error"),
    403: ("permission_error", "permission_error"),
    404: ("not_found_error", "not_found_error"),
    405: ("invalid_request_error", "invalid_request_error"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_error"),
    500: ("server_error", "api_error"),
    502: ("server_error", "api_error"),
    503: ("server_error", "overloaded_error"),
    504: ("server_error", "api_error"),
}


class APIError(Exception):
    """An error response: status, a client-safe message, and the field it is about."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers: dict[str, str] = dict(headers or {})
        # Set once the request was counted in the metrics (by the generation runner).
        self.recorded = False


class ClientDisconnected(Exception):
    """The client went away before the response was complete; nothing is sent."""


def _retry_after(seconds: float | None) -> dict[str, str]:
    value = 1 if seconds is None or not math.isfinite(seconds) else max(1, math.ceil(seconds))
    return {"Retry-After": str(value)}


def from_exception(exc: BaseException, *, rename: Rename | None = None) -> APIError:
    """Map an exception raised while serving a request to the response the client gets.

    ``rename`` turns provider-side field names into the wire names of the endpoint
    (``max_output_tokens`` -> ``max_tokens``), so a 400 names what the client sent.
    """
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, core.InvalidRequestError):
        field = exc.field
        if field is not None and rename is not None:
            field = rename(field)
        code = "context_length_exceeded" if isinstance(exc, core.ContextLengthError) else None
        return APIError(400, str(exc), param=field, code=code)
    if isinstance(exc, core.OverloadedError):
        return APIError(
            429,
            f"server is at capacity: {exc}",
            code="overloaded",
            headers=_retry_after(exc.retry_after),
        )
    if isinstance(exc, core.RateLimitError):
        return APIError(
            429,
            "upstream rate limit reached",
            code="rate_limit_exceeded",
            headers=_retry_after(exc.retry_after),
        )
    if isinstance(exc, core.ModelNotFoundError):
        return APIError(404, str(exc), param="model", code="model_not_found")
    # An upstream 401 means the *server's* credentials are wrong, not the client's: 502.
    if isinstance(exc, core.AuthenticationError):
        logger.error("upstream provider rejected the server's credentials: %s", exc)
        return APIError(502, "upstream provider rejected the server's credentials")
    if isinstance(exc, core.RequestTimeoutError):
        return APIError(504, "generation timed out")
    if isinstance(exc, core.ProviderUnavailableError):
        logger.error("upstream provider unavailable: %s", exc)
        return APIError(502, "upstream provider unavailable")
    if isinstance(exc, core.ProviderError):
        logger.error("upstream provider error: %s", exc)
        return APIError(502, "upstream provider error")
    # Only without the model's answer attached (which is returned instead, see .generation).
    if isinstance(exc, (core.StructuredOutputError, core.ToolCallError)):
        logger.error("the model's output did not validate: %s", exc)
        return APIError(502, "the model's output did not validate")
    logger.exception("internal error while serving a request", exc_info=exc)
    return APIError(500, "internal server error")


def openai_error_body(err: APIError) -> dict[str, Any]:
    """The OpenAI error object: ``{"error": {message, type, param, code}}``."""
    kind = _TYPES.get(err.status, ("server_error", "api_error"))[0]
    return {"error": {"message": err.message, "type": kind, "param": err.param, "code": err.code}}


def anthropic_error_body(err: APIError) -> dict[str, Any]:
    """The Anthropic error object: ``{"type": "error", "error": {type, message}}``."""
    kind = _TYPES.get(err.status, ("server_error", "api_error"))[1]
    message = (
        err.message
        if err.param is None or err.param in err.message
        else (f"{err.param}: {err.message}")
    )
    return {"type": "error", "error": {"type": kind, "message": message}}


def error_body(err: APIError, flavor: Flavor) -> dict[str, Any]:
    """Render ``err`` in the shape of the API it answers."""
    return anthropic_error_body(err) if flavor == "anthropic" else openai_error_body(err)
