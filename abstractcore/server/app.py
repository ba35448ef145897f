"""The ASGI app: routes, authentication, error rendering, health, metrics, docs, lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import AbstractCoreError
from ..providers.base import BaseProvider
from . import anthropic_api, openai_api
from .generation import CLIENT_CLOSED
from .http_errors import APIError, ClientDisconnected, Flavor, error_body, from_exception
from .openapi import (
    ANTHROPIC_ERRORS,
    OPENAI_ERRORS,
    anthropic_stream,
    install_openapi,
    openai_stream,
    request_body,
)
from .openapi_examples import CHAT_EXAMPLES, COMPLETION_EXAMPLES, MESSAGES_EXAMPLES
from .openapi_models import (
    OPENAI_CHAT_EVENTS,
    OPENAI_TEXT_EVENTS,
    ChatCompletion,
    HealthBody,
    MessageObject,
    ModelList,
    TextCompletion,
)
from .schemas_anthropic import MessagesRequest
from .schemas_openai import ChatCompletionRequest, CompletionRequest
from .state import DEFAULT_MAX_BODY_BYTES, ProviderSource, ServerSettings, ServerState

__all__ = ["create_app", "get_state"]

logger = logging.getLogger("abstractcore.server")

Handler = Callable[[Request, ServerState, float], Awaitable[Response]]


def error_response(err: APIError, flavor: Flavor) -> JSONResponse:
    """``err`` as a JSON response in the API's own shape."""
    return JSONResponse(error_body(err, flavor), status_code=err.status, headers=err.headers)


def _route(
    state: ServerState, endpoint: str, flavor: Flavor, handler: Handler
) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        started = time.perf_counter()
        try:
            state.check_auth(request)
            state.require_provider()  # 503 while loading, before the body is even read
            return await handler(request, state, started)
        except ClientDisconnected:
            return Response(status_code=CLIENT_CLOSED)
        except Exception as exc:  # noqa: BLE001 - the one error boundary of the API routes
            err = from_exception(exc)
            if not err.recorded:
                state.metrics.record(endpoint, err.status, latency_s=time.perf_counter() - started)
            return error_response(err, flavor)

    run.__name__ = endpoint
    return run


def _flavor_of(path: str) -> Flavor:
    return "anthropic" if path.startswith("/v1/messages") else "openai"


def get_state(app: Any) -> ServerState:
    """The :class:`ServerState` behind an app made by :func:`create_app`."""
    state: ServerState = app.state.abstractcore
    return state


def create_app(
    provider: ProviderSource,
    *,
    api_key: str | None = None,
    model_aliases: Iterable[str] = (),
    max_output_tokens_cap: int | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    cors_origins: Iterable[str] = (),
    keepalive_interval: float = 5.0,
) -> FastAPI:
    """An OpenAI- and Anthropic-compatible app serving one provider's model.

    ``provider`` is a zero-argument factory, called on a thread at startup while the API
    answers 503, or a ready provider instance. The app owns what a factory builds and closes
    it at shutdown on the server's event loop, where an HTTP provider's async client lives;
    an instance stays the caller's to close (so prefer a factory for HTTP providers).
    """
    settings = ServerSettings(
        api_key=api_key,
        model_aliases=tuple(model_aliases),
        max_output_tokens_cap=max_output_tokens_cap,
        max_body_bytes=max_body_bytes,
        cors_origins=tuple(cors_origins),
        keepalive_interval=keepalive_interval,
    )
    state = ServerState(provider, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.ensure_future(_load(state)) if state.factory is not None else None
        try:
            yield
        finally:
            if loader is not None:
                # A model still loading on its thread cannot be interrupted: wait, then close it.
                await asyncio.gather(loader, return_exceptions=True)
            if state.owns_provider and state.provider is not None:
                await state.provider.aclose()

    app = FastAPI(
        title="abstractcore",
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.abstractcore = state
    install_openapi(app, secured=api_key is not None, model_id=lambda: state.model_id)
    _add_api_routes(app, state)

    async def health(request: Request) -> Response:
        return _health(state)

    async def metrics(request: Request) -> Response:
        body, content_type = state.metrics.render(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    app.add_api_route(
        "/health",
        health,
        methods=["GET"],
        summary="Readiness probe (no key needed)",
        responses={200: {"model": HealthBody}, 503: {"model": HealthBody}},
    )
    app.add_api_route(
        "/metrics",
        metrics,
        methods=["GET"],
        summary="Prometheus metrics (no key needed)",
        response_class=PrometheusResponse,
        responses={200: {"description": "The Prometheus text exposition format."}},
    )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        err = APIError(exc.status_code, str(exc.detail), headers=exc.headers)
        return error_response(err, _flavor_of(request.url.path))

    app.add_exception_handler(StarletteHTTPException, http_error)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["Retry-After"],
        )
    return app


class PrometheusResponse(Response):
    """The media type of ``/metrics`` in the OpenAPI document."""

    media_type = "text/plain"


def _add_api_routes(app: FastAPI, state: ServerState) -> None:
    """The OpenAI and Anthropic routes, documented: request bodies and responses."""
    chunks = "chat.completion.chunk events, then `data: [DONE]`."
    app.add_api_route(
        "/v1/chat/completions",
        _route(state, "chat_completions", "openai", openai_api.chat_completions),
        methods=["POST"],
        summary="OpenAI chat completion",
        openapi_extra=request_body(ChatCompletionRequest, CHAT_EXAMPLES),
        responses={**openai_stream(ChatCompletion, OPENAI_CHAT_EVENTS, chunks), **OPENAI_ERRORS},
    )
    app.add_api_route(
        "/v1/completions",
        _route(state, "completions", "openai", openai_api.completions),
        methods=["POST"],
        summary="OpenAI (legacy) text completion",
        openapi_extra=request_body(CompletionRequest, COMPLETION_EXAMPLES),
        responses={
            **openai_stream(TextCompletion, OPENAI_TEXT_EVENTS, "text_completion events."),
            **OPENAI_ERRORS,
        },
    )
    app.add_api_route(
        "/v1/models",
        _route(state, "models", "openai", openai_api.list_models),
        methods=["GET"],
        summary="The served model and its aliases",
        responses={200: {"model": ModelList}, **OPENAI_ERRORS},
    )
    app.add_api_route(
        "/v1/messages",
        _route(state, "messages", "anthropic", anthropic_api.messages),
        methods=["POST"],
        summary="Anthropic message",
        openapi_extra=request_body(MessagesRequest, MESSAGES_EXAMPLES),
        responses={**anthropic_stream(MessageObject), **ANTHROPIC_ERRORS},
    )


async def _load(state: ServerState) -> None:
    """Build the provider on a dedicated thread that ends right after (see below)."""
    factory = state.factory
    assert factory is not None
    loop = asyncio.get_running_loop()
    done: asyncio.Future[BaseProvider] = loop.create_future()

    def work() -> None:
        try:
            provider = factory()
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop
            loop.call_soon_threadsafe(_settle, done, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, done, provider, None)

    # Not a pooled worker: MLX keeps per-thread state whose destructor runs when the thread
    # ends; a pool thread idling until interpreter exit made that abort the process.
    thread = threading.Thread(target=work, name="abstractcore-load-model", daemon=True)
    started = time.perf_counter()
    thread.start()
    try:
        state.provider = await asyncio.shield(done)
    except Exception as exc:
        state.load_error = f"{type(exc).__name__}: {exc}"
        # An abstractcore error is a configuration problem and says what is wrong: no traceback.
        expected = isinstance(exc, AbstractCoreError)
        logger.error(
            "loading the model failed: %s", state.load_error, exc_info=None if expected else exc
        )
        return
    finally:
        await asyncio.to_thread(thread.join)
    logger.info("model %s ready in %.1f s", state.provider.model, time.perf_counter() - started)


def _settle(
    fut: asyncio.Future[BaseProvider], value: BaseProvider | None, exc: BaseException | None
) -> None:
    if fut.cancelled():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        assert value is not None
        fut.set_result(value)


def _health(state: ServerState) -> Response:
    stats = state.engine_stats()
    ready = state.ready and not state.draining
    if state.draining:
        status = "draining"
    else:
        status = "ok" if ready else ("error" if state.load_error else "loading")
    body: dict[str, Any] = {
        "status": status,
        "ready": ready,
        "model": state.model_id or None,
        "provider": getattr(state.provider, "provider_name", None),
        "in_flight": state.in_flight,
        "active": (stats or {}).get("active", state.in_flight),
        "queued": (stats or {}).get("queued", 0),
        "engine": stats,
    }
    return JSONResponse(body, status_code=200 if ready else 503)
