"""Structured output: ``response_model`` / ``response_format`` as one :class:`ResponseFormat`.

A request asks for JSON in one of two ways: a pydantic model (``response_model=Invoice``,
``.parsed`` is an instance) or OpenAI's ``response_format`` mapping (``{"type":
"json_schema", "json_schema": {"name", "schema", "strict"}}`` or ``{"type": "json_object"}``,
``.parsed`` is the JSON value). Both become a :class:`ResponseFormat`, which every provider
maps to its backend's native mechanism, and which parses and validates the text that comes
back (pydantic for a model, ``jsonschema`` for a bare schema).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ._schema import check_json_schema, describe_pydantic_errors, schema_errors
from .errors import InvalidRequestError

__all__ = ["ResponseFormat", "closed_schema", "response_format_from", "strict_schema"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# One Markdown code fence around the whole reply (```json ... ```), which models add when
# the backend cannot constrain them; the JSON inside is what they meant.
_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


class ResponseFormat(BaseModel):
    """What shape the answer must have (``kind``): any JSON object, or JSON matching
    ``json_schema`` (``model`` is the pydantic class when the request gave one)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    kind: Literal["json_schema", "json_object"]
    name: str = "response"
    description: str | None = None
    json_schema: dict[str, Any] | None = None
    strict: bool = False
    model: type[BaseModel] | None = None

    def parse(self, text: str) -> Any:
        """The validated value of ``text``; raises ValueError listing what is wrong."""
        body = text.strip()
        fenced = _FENCE.match(body)
        if fenced:
            body = fenced.group(1).strip()
        if self.model is not None:
            try:
                return self.model.model_validate_json(body)
            except ValidationError as exc:
                raise ValueError(describe_pydantic_errors(exc)) from exc
        try:
            value = json.loads(body)
        except ValueError as exc:
            raise ValueError(f"not valid JSON: {exc}") from exc
        if self.kind == "json_object":
            if not isinstance(value, dict):
                raise ValueError(f"expected a JSON object, got {type(value).__name__}")
            return value
        assert self.json_schema is not None
        problems = schema_errors(self.json_schema, value)
        if problems:
            raise ValueError(problems)
        return value

    def schema_for_prompt(self) -> str:
        """The schema as compact JSON (for retry messages and prompt-only backends)."""
        return json.dumps(self.json_schema or {"type": "object"}, separators=(",", ":"))


def response_format_from(response_model: Any, response_format: Any) -> ResponseFormat | None:
    """The request's :class:`ResponseFormat` (None for plain text); InvalidRequestError names
    ``response_model`` or the ``response_format`` field that is wrong."""
    if response_model is not None and response_format is not None:
        if not (isinstance(response_format, Mapping) and response_format.get("type") == "text"):
            raise InvalidRequestError(
                "pass response_model or response_format, not both", field="response_format"
            )
    if response_model is not None:
        return _from_model(response_model)
    if response_format is None or isinstance(response_format, ResponseFormat):
        return response_format
    if isinstance(response_format, type) and issubclass(response_format, BaseModel):
        return _from_model(response_format)  # what openai's parse() accepts
    if not isinstance(response_format, Mapping):
        raise InvalidRequestError(
            "response_format must be a mapping such as {'type': 'json_object'}",
            field="response_format",
        )
    kind = response_format.get("type")
    _only(response_format, {"type", "json_schema"}, "response_format")
    if kind == "text":
        return None
    if kind == "json_object":
        _only(response_format, {"type"}, "response_format")
        return ResponseFormat(kind="json_object")
    if kind != "json_schema":
        raise InvalidRequestError(
            f"response_format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}",
            field="response_format.type",
        )
    spec = response_format.get("json_schema")
    where = "response_format.json_schema"
    if not isinstance(spec, Mapping):
        raise InvalidRequestError(f"{where} must be an object", field=where)
    _only(spec, {"name", "schema", "strict", "description"}, where)
    name = spec.get("name", "response")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidRequestError(
            f"{where}.name must be 1-64 letters, digits, '_' or '-', got {name!r}",
            field=f"{where}.name",
        )
    strict = spec.get("strict") or False
    if not isinstance(strict, bool):
        raise InvalidRequestError(f"{where}.strict must be a boolean", field=f"{where}.strict")
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidRequestError(
            f"{where}.description must be a string", field=f"{where}.description"
        )
    schema = spec.get("schema")
    if schema is None:
        raise InvalidRequestError(f"{where}.schema is required", field=f"{where}.schema")
    check_json_schema(schema, f"{where}.schema")
    return ResponseFormat(
        kind="json_schema",
        name=name,
        description=description,
        json_schema=dict(schema),
        strict=strict,
    )


def strict_schema(schema: Mapping[str, Any]) -> dict[str, Any] | None:
    """``schema`` in the form OpenAI's strict mode takes (every object closed with
    ``additionalProperties: false``), or None when strict mode cannot express it (an object
    with optional properties or open extra properties)."""
    out = copy.deepcopy(dict(schema))
    for node in _object_schemas(out):
        props = node.get("properties", {})
        extra = node.get("additionalProperties", False)
        if extra is not False or set(node.get("required", [])) != set(props):
            return None
        node["additionalProperties"] = False
    return out


def closed_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` with every object that does not say otherwise closed to extra properties
    (``additionalProperties: false``): what a pydantic model accepts anyway (it ignores or
    refuses extras), and what keeps a constrained model from inventing fields until its
    tokens run out."""
    out = copy.deepcopy(dict(schema))
    for node in _object_schemas(out):
        node.setdefault("additionalProperties", False)
    return out


#: Keywords whose values are data, not schemas: never walked into.
_VALUE_KEYWORDS = frozenset({"enum", "const", "default", "examples"})


def _object_schemas(node: Any) -> Iterator[dict[str, Any]]:
    """Every object schema in ``node``, outermost first (the caller may change a node
    before its children are visited)."""
    if isinstance(node, list):
        for x in node:
            yield from _object_schemas(x)
        return
    if not isinstance(node, dict):
        return
    if node.get("type") == "object" or "properties" in node:
        yield node
    for k, v in list(node.items()):
        if k not in _VALUE_KEYWORDS:
            yield from _object_schemas(v)


def _from_model(model: Any) -> ResponseFormat:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise InvalidRequestError(
            f"response_model must be a pydantic model class, got {model!r}",
            field="response_model",
        )
    schema = model.model_json_schema()
    doc = model.__doc__ if model.__doc__ != BaseModel.__doc__ else None
    name = model.__name__ if _NAME.match(model.__name__) else "response"
    return ResponseFormat(
        kind="json_schema",
        name=name,
        description=(doc or "").strip() or None,
        json_schema=schema,
        strict=strict_schema(schema) is not None,
        model=model,
    )


def _only(spec: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise InvalidRequestError(
            f"{where} has unknown field(s): {', '.join(unknown)}", field=f"{where}.{unknown[0]}"
        )
