"""The fake model behind the three dialects: a request in neutral form (:class:`Ask`) in, a
:class:`Reply` out. Deterministic, so tests can predict every byte:

- plain text: ``"Echo: <last user message>"``, one word per token, cut at the token limit;
- tools offered (and not switched off with tool_choice "none") and a user turn last: it calls
  the tool the request names, once; else the first tool once per ``" and "``-separated part
  of the first user message (only the first part when parallel calls are off). Arguments are
  made from the tool's schema with the part's last word (:func:`value_for`);
- tool results last: ``"Result: <content>"`` (several joined with ``" | "``);
- a response schema (or JSON mode): the JSON made from the schema with the first user
  message's last word (JSON mode, or an object schema without properties:
  ``{"answer": <word>}``).

The first user message, not the last, feeds the values, so a structured-output retry (whose
last user turn is the fed-back error) answers the same value. Scenarios (the model name's
prefix): ``bad-once`` / ``bad-always`` make the model's JSON (tool arguments or structured
answer) wrong-typed on the first / every attempt; ``loop-forever`` calls tools even after
their results. :class:`Knobs` are per-model settings a test chooses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .common import BadRequest


@dataclass
class Knobs:
    """Per-model settings: ``splits`` are the offsets where streamed text is cut (into the
    concatenated argument texts of all calls, or into a JSON answer; default every 4
    characters); ``calls_per_line`` how many whole calls one Ollama stream line carries."""

    splits: list[int] | None = None
    calls_per_line: int = 1


@dataclass
class Turn:
    """One conversation turn, dialect-neutral: ``results`` for a turn of tool results."""

    role: str  # "user" | "assistant" | "tool"
    text: str = ""
    results: list[str] = field(default_factory=list)


@dataclass
class Ask:
    """What a request asks, whatever the dialect (already checked by it)."""

    model: str
    turns: list[Turn]
    texts: list[str]  # all message text, counted as prompt tokens
    limit: int | None = None
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> parameters schema
    choice: str | None = None  # "auto" | "none" | "required" | a tool name
    parallel: bool = True
    schema: dict[str, Any] | None = None
    json_object: bool = False
    logprobs: int | None = None  # top_logprobs k when logprobs were asked for
    preface: str = ""  # text the dialect's model writes before its tool calls


@dataclass
class FakeCall:
    """One tool call; ``id`` is a suffix each dialect prefixes its own way."""

    id: str
    name: str
    arguments: dict[str, Any]

    @property
    def text(self) -> str:
        """The arguments as the model writes them (non-ASCII as \\u escapes)."""
        return json.dumps(self.arguments)


@dataclass
class Reply:
    """What the fake model answers for one request."""

    model: str
    pieces: list[str]
    finish: str  # "stop" | "length" | "tool_calls"
    prompt_tokens: int
    cached_tokens: int
    calls: list[FakeCall] = field(default_factory=list)
    logprobs: int | None = None
    knobs: Knobs = field(default_factory=Knobs)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces) + len(self.calls)

    def logprob_entries(self) -> list[dict[str, Any]]:
        """OpenAI-shaped logprobs, one per piece (see :func:`logprob_entries`)."""
        return logprob_entries(self.pieces, self.logprobs or 0)

    def argument_frames(self) -> list[list[tuple[int, str]]]:
        """The calls' argument texts cut at the knobs' splits: each frame lists (call index,
        fragment), more than one when a cut spans the end of a call."""
        texts = [c.text for c in self.calls]
        whole = "".join(texts)
        starts = [sum(len(t) for t in texts[:i]) for i in range(len(texts))]
        frames = []
        for a, b in _bounds(len(whole), self.knobs.splits):
            frame = []
            for i, (s, t) in enumerate(zip(starts, texts)):
                lo, hi = max(a, s), min(b, s + len(t))
                if lo < hi:
                    frame.append((i, t[lo - s : hi - s]))
            frames.append(frame)
        return frames


def cut(text: str, splits: list[int] | None) -> list[str]:
    """``text`` cut at ``splits`` (default: every 4 characters)."""
    return [text[a:b] for a, b in _bounds(len(text), splits)]


def _bounds(n: int, splits: list[int] | None) -> list[tuple[int, int]]:
    points = range(4, n, 4) if splits is None else splits
    inner = sorted({p for p in points if 0 < p < n})
    edges = [0, *inner, n] if n else []
    return list(zip(edges, edges[1:]))


def words(text: str) -> list[str]:
    """One piece per word, each after the first with its leading space."""
    parts = text.split(" ")
    return [parts[0]] + [" " + w for w in parts[1:]]


def think(ask: Ask, scenario: str, attempt: int, knobs: Knobs, cached: int) -> Reply:
    """The fake model's answer to ``ask``."""
    users = [t for t in ask.turns if t.role == "user"]
    if not users:
        raise BadRequest("messages: at least one user message is required", "messages")
    first, last = users[0].text, ask.turns[-1]
    bad = scenario == "bad-always" or (scenario == "bad-once" and attempt == 1)
    prompt = sum(len(t.split()) for t in ask.texts)
    base: dict[str, Any] = {
        "model": ask.model,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "logprobs": ask.logprobs,
        "knobs": knobs,
    }
    if ask.tools and ask.choice != "none":
        if last.role == "user" or scenario == "loop-forever":
            calls = _calls(ask, first, bad)
            pieces = words(ask.preface) if ask.preface else []
            return Reply(pieces=pieces, finish="tool_calls", calls=calls, **base)
    if last.role == "tool":
        pieces = words("Result: " + " | ".join(last.results))
    elif ask.schema is not None or ask.json_object:
        schema = ask.schema or {"type": "object"}
        value = (wrong_value if bad else value_for)(schema, last_word(first))
        pieces = cut(json.dumps(value), knobs.splits)
    else:
        pieces = words(f"Echo: {users[-1].text}")
    if ask.limit is not None and ask.limit < len(pieces):
        return Reply(pieces=pieces[: ask.limit], finish="length", **base)
    return Reply(pieces=pieces, finish="stop", **base)


def _calls(ask: Ask, first: str, bad: bool) -> list[FakeCall]:
    named = ask.choice if ask.choice in ask.tools else None
    name = named or next(iter(ask.tools))
    parts = [first] if named else first.split(" and ")
    if not ask.parallel:
        parts = parts[:1]
    turn = sum(1 for t in ask.turns if t.role == "assistant")
    make = wrong_value if bad else value_for
    schema = ask.tools[name]
    return [
        FakeCall(f"{turn}_{i}", name, make(schema, last_word(part))) for i, part in enumerate(parts)
    ]


def last_word(text: str) -> str:
    """The text's last word ("" for none)."""
    split = text.split()
    return split[-1] if split else ""


def value_for(schema: dict[str, Any], word: str, root: dict[str, Any] | None = None) -> Any:
    """A value ``schema`` accepts: strings are ``word``, integers its length, numbers its
    length + 0.5, booleans true, arrays one item, objects their required properties (an
    object schema without properties: ``{"answer": word}``)."""
    root = schema if root is None else root
    if "$ref" in schema:
        return value_for(_resolve(root, schema["$ref"]), word, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return value_for(options[0], word, root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" and "properties" not in schema:  # any object: JSON mode's answer
        return {"answer": word}
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {k: value_for(props.get(k, {}), word, root) for k in schema.get("required", [])}
    if kind == "array":
        return [value_for(schema.get("items", {}), word, root)] * max(1, schema.get("minItems", 1))
    if kind == "integer":
        return len(word)
    if kind == "number":
        return len(word) + 0.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return word


def wrong_value(schema: dict[str, Any], word: str) -> Any:
    """:func:`value_for` with every value of the wrong type (a string where anything else
    was wanted, 0 where a string was)."""
    value = value_for(schema, word)
    if isinstance(value, dict):
        return {k: _wrong(v) for k, v in value.items()}
    return _wrong(value)


def _wrong(value: Any) -> Any:
    return 0 if isinstance(value, str) else "wrong"


def _resolve(root: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return dict(node)


def logprob_entries(pieces: list[str], k: int) -> list[dict[str, Any]]:
    """Token ``i`` has logprob ``-0.5 * (i + 1)``; its top ``k`` are itself, then ``alt1``,
    ``alt2``... each 1 lower."""
    out = []
    for i, piece in enumerate(pieces):
        lp = -0.5 * (i + 1)
        top = [_entry(piece, lp)] + [_entry(f"alt{j}", lp - j) for j in range(1, k)]
        out.append({**_entry(piece, lp), "top_logprobs": top[:k]})
    return out


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}
