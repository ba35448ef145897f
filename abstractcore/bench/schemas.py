"""Generated JSON schemas for the structured-output benchmarks.

:func:`generate_schemas` builds ``n`` different object schemas from a seed, each mixing the
features a grammar must enforce: nested objects, enums, arrays with ``minItems`` /
``maxItems``, integers and numbers with bounds, required and optional fields, strings with
patterns or length limits. The same seed gives the same schemas, so every system and every
run sees the same set. :func:`schema_prompt` asks for one object of a schema in words, the
way an app prompts a model it cannot constrain.
"""

from __future__ import annotations

import json
import random
from typing import Any

__all__ = ["answer_is_valid", "generate_schemas", "long_schema", "schema_prompt"]

_NOUNS = [
    "city", "book", "order", "sensor", "recipe", "invoice", "flight", "patient", "ticket",
    "planet", "course", "album", "device", "account", "station", "garden", "lesson", "vehicle",
]  # fmt: skip
_FIELDS = [
    "name", "title", "code", "label", "owner", "status", "kind", "region", "color", "level",
    "count", "price", "score", "weight", "rating", "year", "tags", "notes", "items", "author",
]  # fmt: skip
_WORDS = ["red", "green", "blue", "low", "medium", "high", "open", "closed", "north", "south"]
_PATTERNS = [
    r"^[A-Z]{3}$", r"^[a-z]+-[0-9]{2}$", r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", r"^#[0-9a-f]{6}$",
]  # fmt: skip


def _leaf(rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(["string", "pattern", "enum", "integer", "number", "boolean"])
    if kind == "string":
        return {"type": "string", "minLength": 1, "maxLength": rng.choice([8, 16, 24])}
    if kind == "pattern":
        return {"type": "string", "pattern": rng.choice(_PATTERNS)}
    if kind == "enum":
        return {"type": "string", "enum": rng.sample(_WORDS, rng.randint(2, 4))}
    if kind == "integer":
        low = rng.randint(-10, 10)
        return {"type": "integer", "minimum": low, "maximum": low + rng.choice([5, 50, 500])}
    if kind == "number":
        return {"type": "number", "minimum": 0, "maximum": rng.choice([1, 10, 100])}
    return {"type": "boolean"}


def _object(rng: random.Random, depth: int) -> dict[str, Any]:
    names = rng.sample(_FIELDS, rng.randint(2, 4))
    props: dict[str, Any] = {}
    for name in names:
        roll = rng.random()
        if depth > 0 and roll < 0.25:
            props[name] = _object(rng, depth - 1)
        elif roll < 0.45:
            low = rng.randint(0, 2)
            props[name] = {
                "type": "array",
                "items": _leaf(rng),
                "minItems": low,
                "maxItems": low + rng.randint(1, 3),
            }
        else:
            props[name] = _leaf(rng)
    required = [n for n in names if rng.random() < 0.7] or names[:1]
    return {
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }


def generate_schemas(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` distinct object schemas (titles name them), deterministic for a seed."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(out) < n:
        schema = _object(rng, depth=rng.choice([0, 1, 1, 2]))
        key = json.dumps(schema, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        out.append({"title": f"{rng.choice(_NOUNS)}_{len(out)}", **schema})
    return out


def long_schema(items: int = 64) -> dict[str, Any]:
    """An object no answer of fewer than ~``4 * items`` tokens completes (a cost benchmark
    keeps every constrained row decoding until its token budget, like the free rows)."""
    word = {"type": "string", "enum": _WORDS}
    return {
        "title": "long_list",
        "type": "object",
        "properties": {"words": {"type": "array", "items": word, "minItems": items}},
        "required": ["words"],
        "additionalProperties": False,
    }


def answer_is_valid(schema: dict[str, Any], text: str) -> bool:
    """Whether the whole of ``text`` is one JSON value valid against ``schema`` (what
    ``.parsed`` requires: no prose or code fence around it)."""
    from jsonschema import Draft202012Validator

    try:
        value = json.loads(text)
    except ValueError:
        return False
    return bool(Draft202012Validator(schema).is_valid(value))


def schema_prompt(schema: dict[str, Any]) -> str:
    """A request for one JSON object of ``schema``, in words (what an unconstrained model
    gets)."""
    return (
        f"Reply with one JSON object, and nothing else, that matches this JSON schema "
        f"(a {schema.get('title', 'record')}):\n{json.dumps(schema)}"
    )
