"""JSON-schema checks shared by tool definitions and structured output (``jsonschema``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from .errors import InvalidRequestError

__all__ = ["check_json_schema", "describe_pydantic_errors", "schema_errors"]


def check_json_schema(schema: Any, where: str, *, object_only: bool = False) -> None:
    """InvalidRequestError (naming ``where``) unless ``schema`` is a valid JSON schema."""
    if not isinstance(schema, Mapping):
        raise InvalidRequestError(f"{where} must be a JSON schema object", field=where)
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(dict(schema))
    except SchemaError as exc:
        at = "".join(f"[{p!r}]" for p in exc.path)
        raise InvalidRequestError(
            f"{where} is not a valid JSON schema: {exc.message} (at {at or 'the top'})",
            field=where,
        ) from None
    if object_only and schema.get("type", "object") != "object":
        raise InvalidRequestError(
            f"{where} must describe an object (type 'object'), got type {schema.get('type')!r}",
            field=where,
        )


def schema_errors(schema: Mapping[str, Any], value: Any) -> str | None:
    """Why ``value`` does not match ``schema`` (one line per problem), or None if it does."""
    from jsonschema import Draft202012Validator

    errors = sorted(Draft202012Validator(dict(schema)).iter_errors(value), key=str)
    if not errors:
        return None
    return "; ".join(
        f"{'.'.join(str(x) for x in e.absolute_path) or '(top level)'}: {e.message}" for e in errors
    )


def describe_pydantic_errors(exc: ValidationError) -> str:
    """A pydantic ValidationError as ``loc: message; ...``."""
    parts = []
    for e in exc.errors(include_url=False):
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)
