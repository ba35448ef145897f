"""Request bodies validated with pydantic models; the first problem becomes a 400 naming the field.

The request models (:mod:`.schemas_openai`, :mod:`.schemas_anthropic`) derive from
:class:`RequestModel`: strict types (``"5"`` is not an integer, ``true`` is not 1), finite
numbers, unknown fields refused. :func:`validate_body` turns pydantic's first error into an
:class:`~.http_errors.APIError` whose ``param`` is written the way the client wrote the field:
``messages[0].content`` for OpenAI, ``messages.0.content`` for Anthropic.

Two helpers describe what plain pydantic types cannot:

- :class:`Neutral`: a field the server does not implement, accepted only at its neutral value
  (``frequency_penalty: 0``), so that a client asking for more learns it at once;
- :func:`choice`: a union picked by a key (``role``, ``type``) or by the JSON type (a string or
  a list of parts), whose errors name the key and list what is supported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from .._schema import check_json_schema
from ..errors import InvalidRequestError
from ..tools.definition import TOOL_NAME_PATTERN
from .http_errors import APIError

__all__ = [
    "Neutral",
    "RequestModel",
    "Style",
    "by_key",
    "choice",
    "check_object_schema",
    "check_schema",
    "check_tool_name",
    "field_error",
    "render_param",
    "validate_body",
]

Style = Literal["openai", "anthropic"]
M = TypeVar("M", bound=BaseModel)

# Prefix of the tags of :func:`choice` unions: pydantic puts the tag in an error's location,
# where the client never wrote it, so it is dropped from the field name.
_TAG = "<"
_MAX_REPR = 80


class RequestModel(BaseModel):
    """Base of every request model: strict JSON types, finite numbers, no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def validate_body(model: type[M], body: Mapping[str, Any], style: Style) -> M:
    """``body`` as ``model``, or an APIError (400) about its first invalid field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _first_error(exc, style) from None


def field_error(template: str, *at: str | int, **context: Any) -> PydanticCustomError:
    """A validation error for a model validator: ``template`` says what is wrong (a predicate
    such as ``"must be 1"``; ``{name}`` placeholders are filled from ``context``, which keeps
    client-supplied text out of the template), ``at`` the field below the validated one."""
    return PydanticCustomError("invalid_field", template, {**context, "at": list(at)})


class Neutral:
    """A field the server does not implement, accepted when absent, null or at one of
    ``allowed`` (compared with its JSON type: ``0`` and ``0.0`` but not ``false``)."""

    def __init__(self, *allowed: Any) -> None:
        self.allowed = allowed

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        values: list[Any] = []
        for value in (*self.allowed, None):
            if not any(_same(value, v) for v in values):
                values.append(value)
        return {
            "enum": values,
            "description": "Not implemented by this server: accepted only at its neutral value.",
        }

    def _check(self, value: Any) -> Any:
        if value is None or any(_same(value, a) for a in self.allowed):
            return value
        raise PydanticCustomError("unsupported_value", "unsupported", {"got": _short(value)})


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


# error type of a choice() union -> (key it is picked by, what the key is, what is supported)
_CHOICES: dict[str, tuple[str | None, str, str]] = {}


def choice(
    name: str, pick: Callable[[Any], str | None], *, key: str | None, what: str, supported: str
) -> Discriminator:
    """The discriminator of a union whose members are tagged ``<...>``: ``pick`` returns the
    tag of a value, or None when no member fits. The error then names ``key`` (``role``,
    ``type``; None when the union is chosen by the value's own JSON type) and lists
    ``supported``."""
    error_type = f"unsupported_{name}"
    _CHOICES[error_type] = (key, what, supported)
    return Discriminator(pick, custom_error_type=error_type, custom_error_message=what)


def by_key(key: str, tags: Mapping[str, str]) -> Callable[[Any], str | None]:
    """A :func:`choice` picker: the tag for the value of ``key`` in a JSON object."""

    def pick(value: Any) -> str | None:
        if isinstance(value, Mapping):
            found = value.get(key)
            if isinstance(found, str):
                return tags.get(found)
        return None

    return pick


def check_schema(value: Any, *, object_only: bool = False) -> Any:
    """``value`` if it is a valid JSON schema (describing an object, when ``object_only``);
    null passes, as an absent field would."""
    if value is None:
        return None
    try:
        check_json_schema(value, "the schema", object_only=object_only)
    except InvalidRequestError as exc:
        raise field_error("{why}", why=str(exc).removeprefix("the schema ")) from None
    return value


def check_object_schema(value: Any) -> Any:
    """``value`` if it is a valid JSON schema of an object (a tool's arguments)."""
    return check_schema(value, object_only=True)


def check_tool_name(value: str) -> str:
    """``value`` if OpenAI and Anthropic both accept it as a tool name."""
    if not TOOL_NAME_PATTERN.match(value):
        raise field_error("must be 1-64 letters, digits, '_' or '-' (got {got})", got=_short(value))
    return value


def render_param(loc: Sequence[str | int], style: Style) -> str:
    """A location as the client spells it: ``a[0].b`` (OpenAI) or ``a.0.b`` (Anthropic)."""
    out = ""
    for part in loc:
        if isinstance(part, int) and style == "openai":
            out += f"[{part}]"
        else:
            out += f"{'.' if out else ''}{part}"
    return out


# ---------------------------------------------------------------------- errors
def _first_error(exc: ValidationError, style: Style) -> APIError:
    errors = exc.errors(include_url=False)

    # The field names of the body are checked before any value, as the server always did:
    # an unknown (or unimplemented) top-level field is reported first.
    def rank(e: Any) -> int:
        top_level = len(_location(e)) == 1
        return 0 if top_level and e["type"] in ("extra_forbidden", "unsupported_value") else 1

    e = min(errors, key=rank)  # min is stable: pydantic's order otherwise (field order)
    loc = _location(e)
    param = render_param(loc, style)
    return APIError(400, _message(e, param), param=param or None)


def _location(e: Any) -> list[str | int]:
    loc: list[str | int] = [
        p for p in e["loc"] if not (isinstance(p, str) and p.startswith(_TAG) and p.endswith(">"))
    ]
    ctx = e.get("ctx") or {}
    if e["type"] == "invalid_field":
        loc.extend(ctx.get("at", []))
    choice_of = _CHOICES.get(e["type"])
    if choice_of is not None and choice_of[0] is not None:
        loc.append(choice_of[0])
    return loc


_JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


def _message(e: Any, param: str) -> str:
    kind: str = e["type"]
    ctx = e.get("ctx") or {}
    value = e.get("input")
    field = f"'{param}'" if param else "the request body"
    if kind == "missing":
        return f"missing required field {field}"
    if kind == "extra_forbidden":
        return f"unsupported field {field}"
    if kind == "unsupported_value":
        return f"field {field} is not supported by this server (got {ctx.get('got')})"
    if kind in _CHOICES:
        key, what, supported = _CHOICES[kind]
        if key is None:
            return f"{field} must be {supported}"
        got = value.get(key) if isinstance(value, Mapping) else None
        return f"unknown or unsupported {what} {_short(got)} in {field} (supported: {supported})"
    if kind == "literal_error" and param.endswith(".type"):
        return f"{field}: type {_short(value)} is not supported (supported: {ctx.get('expected')})"
    predicate = _predicate(kind, ctx, value)
    return f"{field} {predicate if predicate is not None else e['msg']}"


def _predicate(kind: str, ctx: Mapping[str, Any], value: Any) -> str | None:
    json_type = _JSON_TYPES.get(type(value), type(value).__name__)
    if kind == "invalid_field":
        return None  # e["msg"] is the template filled in
    if kind in ("int_type", "int_from_float", "int_parsing"):
        return f"must be an integer, got {json_type}"
    if kind in ("float_type", "float_parsing", "finite_number"):
        return f"must be a finite number, got {json_type if kind != 'finite_number' else value}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be a boolean, got {json_type}"
    if kind == "string_type":
        return f"must be a string, got {json_type}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be an object, got {json_type}"
    if kind == "list_type":
        return f"must be a list, got {json_type}"
    if kind == "greater_than_equal":
        return f"must be >= {ctx.get('ge')}, got {_short(value)}"
    if kind == "greater_than":
        return f"must be > {ctx.get('gt')}, got {_short(value)}"
    if kind == "less_than_equal":
        return f"must be <= {ctx.get('le')}, got {_short(value)}"
    if kind == "less_than":
        return f"must be < {ctx.get('lt')}, got {_short(value)}"
    if kind == "string_too_short":
        least = ctx.get("min_length")
        return "must be a non-empty string" if least == 1 else f"needs {least}+ characters"
    if kind == "string_too_long":
        return f"must have at most {ctx.get('max_length')} characters"
    if kind == "too_short":
        least = ctx.get("min_length")
        return "must be a non-empty list" if least == 1 else f"needs at least {least} entries"
    if kind == "too_long":
        return (
            f"has {ctx.get('actual_length')} entries; at most {ctx.get('max_length')} are allowed"
        )
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}, got {_short(value)}"
    return None
