"""Checks of JSON request fields that raise a 400 naming the field, in the client's words."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .errors import APIError

__all__ = [
    "bad",
    "check_fields",
    "is_default",
    "opt_bool",
    "opt_int",
    "opt_number",
    "opt_stop",
    "opt_str",
]


def bad(param: str, message: str) -> APIError:
    """A 400 about ``param``."""
    return APIError(400, message, param=param)


def is_default(*allowed: Any) -> Callable[[Any], bool]:
    """Accept a field only when its value is one of ``allowed`` (its neutral values)."""
    return lambda value: any(value == a and type(value) is type(a) or value is a for a in allowed)


def check_fields(
    body: Mapping[str, Any],
    supported: Iterable[str],
    neutral: Mapping[str, Callable[[Any], bool]] = {},
    *,
    prefix: str = "",
) -> None:
    """400 for an unknown field, or for a known one we do not implement set to a non-default."""
    allowed = set(supported)
    for key, value in body.items():
        if key in allowed:
            continue
        name = f"{prefix}{key}"
        accept = neutral.get(key)
        if accept is None:
            raise bad(name, f"unsupported field '{name}'")
        if value is not None and not accept(value):
            raise bad(name, f"field '{name}' is not supported by this server (got {value!r})")


def opt_int(
    body: Mapping[str, Any], key: str, *, minimum: int | None = None, maximum: int | None = None
) -> int | None:
    """An optional integer field within bounds."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(key, f"'{key}' must be an integer, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise bad(key, f"'{key}' must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise bad(key, f"'{key}' must be <= {maximum}, got {value}")
    return value


def opt_number(
    body: Mapping[str, Any],
    key: str,
    *,
    minimum: float,
    maximum: float,
    exclusive_minimum: bool = False,
) -> float | None:
    """An optional finite number field within bounds."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(key, f"'{key}' must be a number")
    low_ok = value > minimum if exclusive_minimum else value >= minimum
    if not low_ok or value > maximum:
        low = "(" if exclusive_minimum else "["
        raise bad(key, f"'{key}' must be in {low}{minimum}, {maximum}], got {value}")
    return float(value)


def opt_bool(body: Mapping[str, Any], key: str) -> bool | None:
    """An optional boolean field."""
    value = body.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise bad(key, f"'{key}' must be a boolean")


def opt_str(body: Mapping[str, Any], key: str, *, allow_empty: bool = False) -> str | None:
    """An optional string field."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or (not allow_empty and not value):
        raise bad(key, f"'{key}' must be a non-empty string")
    return value


def opt_stop(
    body: Mapping[str, Any], key: str, *, allow_str: bool = True, max_items: int = 16
) -> list[str]:
    """Stop sequences: a string (when allowed) or a list of non-empty strings."""
    value = body.get(key)
    if value is None:
        return []
    items = [value] if allow_str and isinstance(value, str) else value
    if not isinstance(items, list):
        kind = "a string or a list of strings" if allow_str else "a list of strings"
        raise bad(key, f"'{key}' must be {kind}")
    if len(items) > max_items:
        raise bad(key, f"'{key}' has {len(items)} entries; at most {max_items} are allowed")
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item:
            raise bad(f"{key}[{i}]", f"'{key}[{i}]' must be a non-empty string")
    return list(items)
