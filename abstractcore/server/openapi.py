"""The server's OpenAPI document (``/openapi.json``, rendered at ``/docs``).

The API routes read their bodies themselves (size limit first, then JSON, then the model
name, then the fields; see :mod:`.state`), so FastAPI does not infer their request bodies:
each route declares its body with ``openapi_extra`` (FastAPI's pattern for such routes), a
reference to the request model's schema, which :func:`install_openapi` adds to the
document's components. Responses are described by :mod:`.openapi_models`: JSON bodies,
and streams event by event (each event's ``data`` is JSON of one of the event models).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, get_args

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from .. import __version__
from .openapi_examples import EXAMPLE_MODEL
from .openapi_models import (
    ANTHROPIC_EVENTS,
    OPENAI_CHAT_EVENTS,
    OPENAI_TEXT_EVENTS,
    AnthropicErrorBody,
    OpenAIErrorBody,
)
from .schemas_anthropic import MessagesRequest
from .schemas_openai import ChatCompletionRequest, CompletionRequest

__all__ = [
    "ANTHROPIC_ERRORS",
    "OPENAI_ERRORS",
    "anthropic_stream",
    "install_openapi",
    "openai_stream",
    "request_body",
]

REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    ChatCompletionRequest,
    CompletionRequest,
    MessagesRequest,
)
# Models referenced only from raw schemas (stream events): added to the components here.
_EVENT_MODELS = {*OPENAI_CHAT_EVENTS, *OPENAI_TEXT_EVENTS, *ANTHROPIC_EVENTS}
_REF = "#/components/schemas/{model}"


def _errors(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    reasons = {
        400: "Invalid JSON or a bad or unsupported field (named), or a prompt too long.",
        401: "Missing or wrong API key.",
        404: "The model is not served here.",
        413: "The body is over the server's limit.",
        429: "The engine's queue is full, or the upstream provider rate-limited the server.",
        500: "A bug (details in the server log).",
        502: "The upstream provider failed, or rejected the server's credentials.",
        503: "The model is loading, or failed to load.",
        504: "The generation timed out.",
    }
    return {status: {"model": model, "description": why} for status, why in reasons.items()}


OPENAI_ERRORS = _errors(OpenAIErrorBody)
ANTHROPIC_ERRORS = _errors(AnthropicErrorBody)


# ---------------------------------------------------------------------- the document
def request_body(model: type[BaseModel], examples: dict[str, Any]) -> dict[str, Any]:
    """The ``openapi_extra`` of a route whose JSON body is ``model``."""
    media = {"schema": {"$ref": _REF.format(model=model.__name__)}, "examples": examples}
    return {"requestBody": {"required": True, "content": {"application/json": media}}}


def _json_of(models: Sequence[type[BaseModel]]) -> dict[str, Any]:
    return {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": [{"$ref": _REF.format(model=m.__name__)} for m in models]},
    }


def openai_stream(
    model: type[BaseModel], events: Sequence[type[BaseModel]], what: str
) -> dict[int | str, dict[str, Any]]:
    """A 200 that is ``model`` as JSON, or (``stream: true``) ``data:`` events holding one of
    ``events`` as JSON, the last one ``[DONE]``."""
    data = {"type": "string", "if": {"const": "[DONE]"}, "else": _json_of(events)}
    event = {
        "type": "object",
        "description": what,
        "properties": {"event": {"const": "message"}, "data": data},
        "required": ["data"],
    }
    return {200: {"model": model, "content": {"text/event-stream": {"schema": event}}}}


def anthropic_stream(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """A 200 that is ``model`` as JSON, or (``stream: true``) the Messages stream events."""
    names = [get_args(m.model_fields["type"].annotation)[0] for m in ANTHROPIC_EVENTS]
    event = {
        "type": "object",
        "description": "The Messages stream: named events, each with its JSON data.",
        "properties": {"event": {"enum": names}, "data": _json_of(ANTHROPIC_EVENTS)},
        "required": ["event", "data"],
    }
    return {200: {"model": model, "content": {"text/event-stream": {"schema": event}}}}


def _add_schemas(schemas: dict[str, Any], model: type[BaseModel], mode: str) -> None:
    body = model.model_json_schema(ref_template=_REF, mode=mode)  # type: ignore[arg-type]
    for name, definition in [*body.pop("$defs", {}).items(), (model.__name__, body)]:
        if schemas.setdefault(name, definition) != definition:
            raise RuntimeError(f"two OpenAPI schemas are named {name!r}")


def _name_the_model(schema: dict[str, Any], served: str) -> None:
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            media = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            for name, example in media.get("examples", {}).items():
                value = example["value"]
                if value.get("model") == EXAMPLE_MODEL:
                    media["examples"][name] = {**example, "value": {**value, "model": served}}


def install_openapi(app: FastAPI, *, secured: bool, model_id: Callable[[], str]) -> None:
    """Serve a document with the request and event models in its components (and, with
    ``secured``, the API key schemes on the API routes). Its example bodies name the served
    model (``model_id``) once it is loaded; the document is kept from then on."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title="abstractcore",
            version=__version__,
            description="OpenAI- and Anthropic-compatible HTTP API over one model.",
            routes=app.routes,
        )
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for model in REQUEST_MODELS:
            _add_schemas(schemas, model, "validation")
        for model in sorted(_EVENT_MODELS, key=lambda m: m.__name__):
            _add_schemas(schemas, model, "serialization")
        if secured:
            components["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            }
            for path, item in schema.get("paths", {}).items():
                if path.startswith("/v1/"):
                    for operation in item.values():
                        operation["security"] = [{"bearer": []}, {"apiKey": []}]
        served = model_id()
        if served:
            _name_the_model(schema, served)
            app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
