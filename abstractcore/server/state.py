"""What one server process holds: the provider (once loaded), settings, metrics, counters.

Also the per-request checks every API endpoint shares, in the order they run: API key,
readiness, body size while reading, JSON, model name.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from ..providers.base import BaseProvider
from .http_errors import APIError
from .prometheus_metrics import ServerMetrics

__all__ = ["DEFAULT_MAX_BODY_BYTES", "ServerSettings", "ServerState"]

logger = logging.getLogger("abstractcore.server")

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
# A declared body this many times over the limit is not drained: the connection is closed.
_DRAIN_FACTOR = 16


@dataclass(frozen=True)
class ServerSettings:
    """Per-process options of the server (the CLI flags, minus provider construction)."""

    api_key: str | None = None
    model_aliases: tuple[str, ...] = ()
    max_output_tokens_cap: int | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    cors_origins: tuple[str, ...] = ()
    # Seconds without output before a keep-alive comment is sent on a stream; also how long
    # a stream waits for its first chunk before committing to a 200 (errors raised earlier,
    # such as a full queue, still get their own status).
    keepalive_interval: float = 5.0
    extra_model_info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must be non-empty when given")
        if self.max_output_tokens_cap is not None and self.max_output_tokens_cap < 1:
            raise ValueError("max_output_tokens_cap must be >= 1")
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be >= 1024")
        if not self.keepalive_interval > 0:
            raise ValueError("keepalive_interval must be > 0")


ProviderSource = BaseProvider | Callable[[], BaseProvider]


class ServerState:
    """The provider behind the server, and the bookkeeping around it."""

    def __init__(self, source: ProviderSource, settings: ServerSettings) -> None:
        self.settings = settings
        self.provider: BaseProvider | None = None
        self.factory: Callable[[], BaseProvider] | None = None
        if isinstance(source, BaseProvider):
            self.provider = source
        else:
            self.factory = source
        self.owns_provider = self.factory is not None
        self.load_error: str | None = None
        #: Set when shutdown begins: /health and new requests answer 503, so a proxy sends
        #: new work elsewhere while the requests in flight finish.
        self.draining = False
        self.in_flight = 0
        self.created = int(time.time())
        self.metrics = ServerMetrics(self.engine_stats, lambda: self.in_flight)

    # ------------------------------------------------------------------ provider
    @property
    def ready(self) -> bool:
        """True once the provider is loaded and says it can serve."""
        if self.provider is None:
            return False
        flag = getattr(self.provider, "ready", True)
        return bool(flag() if callable(flag) else flag)

    def require_provider(self) -> BaseProvider:
        """The provider, or a 503 while it is loading (or failed to load)."""
        if self.load_error is not None:
            raise APIError(503, "the model failed to load; see the server log")
        if self.draining:
            raise APIError(503, "the server is shutting down", headers={"Retry-After": "1"})
        if self.provider is None or not self.ready:
            raise APIError(503, "the model is loading; retry shortly", headers={"Retry-After": "1"})
        return self.provider

    def engine_stats(self) -> dict[str, Any] | None:
        """``provider.stats()`` when the provider has it (the MLX engine does)."""
        stats = getattr(self.provider, "stats", None)
        if not callable(stats):
            return None
        try:
            value = stats()
        except Exception:  # stats are advisory: a failing probe must not fail /health
            logger.warning("provider.stats() failed", exc_info=True)
            return None
        return dict(value) if isinstance(value, Mapping) else None

    @property
    def model_id(self) -> str:
        """The served model's id (the provider's model name)."""
        return self.provider.model if self.provider is not None else ""

    def model_ids(self) -> list[str]:
        """The model id first, then its aliases: the only accepted ``model`` values."""
        ids = [self.model_id]
        ids.extend(a for a in self.settings.model_aliases if a not in ids)
        return ids

    def check_model(self, name: Any, *, param: str = "model") -> str:
        """Validate the request's ``model``: the served model when absent (the server serves
        one, as mlx-lm's server does), 400 when not a string, 404 when not served here."""
        if name is None:
            return self.model_id
        if not isinstance(name, str):
            raise APIError(400, "'model' must be a string", param=param)
        if name not in self.model_ids():
            raise APIError(
                404,
                f"model {name!r} is not served here; available: {', '.join(self.model_ids())}",
                param=param,
                code="model_not_found",
            )
        return self.model_id

    def cap_output_tokens(self, requested: int | None) -> int | None:
        """Apply the server's output-token cap (also the default when none is requested)."""
        cap = self.settings.max_output_tokens_cap
        if requested is None:
            return cap
        return requested if cap is None else min(requested, cap)

    # ------------------------------------------------------------------ request checks
    def check_auth(self, request: Request) -> None:
        """401 unless the request carries the server's key (Bearer or x-api-key)."""
        expected = self.settings.api_key
        if expected is None:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization")
        if auth is not None:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() == "bearer":
                given = token.strip()
        if not given:
            raise APIError(
                401,
                "missing API key (Authorization: Bearer ... or x-api-key)",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise APIError(
                401,
                "invalid API key",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def read_json(self, request: Request) -> dict[str, Any]:
        """The body as a JSON object; 413 as soon as it passes the limit, before parsing."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError as exc:
                raise APIError(400, "invalid Content-Length header") from exc
            if size > limit:
                raise _too_large(limit, close=size > _DRAIN_FACTOR * limit)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _too_large(limit)
        if not body:
            raise APIError(400, "request body is empty; expected a JSON object")
        try:
            data = json.loads(body)
        except RecursionError:
            raise APIError(400, "request body is nested too deeply to parse") from None
        except UnicodeDecodeError as exc:
            raise APIError(400, "request body is not UTF-8 JSON") from exc
        except json.JSONDecodeError as exc:
            raise APIError(
                400,
                f"request body is not valid JSON: {exc.msg} "
                f"(line {exc.lineno}, column {exc.colno})",
            ) from exc
        if not isinstance(data, dict):
            raise APIError(400, f"request body must be a JSON object, got {type(data).__name__}")
        return data


def _too_large(limit: int, *, close: bool = False) -> APIError:
    # Without Connection: close, uvicorn reads and discards the rest of the body after the
    # response, so the client finishes its upload and reads the 413; closing with unread
    # data would reset the connection under it. Absurd declared sizes are cut off instead.
    headers = {"Connection": "close"} if close else None
    return APIError(
        413, f"request body exceeds the server's limit of {limit} bytes", headers=headers
    )
