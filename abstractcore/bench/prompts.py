"""The benchmark's prompt set (loading, validation, selection) and the queries made of it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError

__all__ = [
    "DEFAULT_PROMPTS_NAME",
    "Prompt",
    "PromptsFileError",
    "Query",
    "default_prompts_file",
    "load_prompts",
    "select_prompts",
]

DEFAULT_PROMPTS_NAME = "mlx_benchmark_prompts_128.json"


class PromptsFileError(ConfigurationError):
    """The prompts file is missing, unreadable or not a list of prompts."""

    def __init__(self, message: str) -> None:
        super().__init__(message, setting="prompts_file")


@dataclass(frozen=True)
class Prompt:
    """One benchmark prompt with a stable id (used in the per-query CSV)."""

    id: str
    text: str


@dataclass(frozen=True)
class Query:
    """One request of a level: chat messages plus per-request options; ``schema``, when the
    query asks for structured output, is what its answer is validated against."""

    id: str
    messages: list[dict[str, str]]
    options: dict[str, Any] = field(default_factory=dict)
    schema: dict[str, Any] | None = None


def default_prompts_file() -> Path:
    """The 128-prompt set shipped in the source tree's ``examples/assets``."""
    return Path(__file__).resolve().parents[2] / "examples" / "assets" / DEFAULT_PROMPTS_NAME


def load_prompts(path: str | Path) -> list[Prompt]:
    """Read a JSON list of prompts, or ``{"prompts": [...]}``; items are strings or {id, text}."""
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise PromptsFileError(f"prompts file not found: {p}") from exc
    except OSError as exc:
        raise PromptsFileError(f"cannot read prompts file {p}: {exc.strerror or exc}") from exc
    try:
        data: Any = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise PromptsFileError(
            f"prompts file {p} is not valid JSON (line {exc.lineno}: {exc.msg})"
        ) from exc
    if isinstance(data, dict):
        data = data.get("prompts")
    if not isinstance(data, list) or not data:
        raise PromptsFileError(
            f'prompts file {p} must hold a non-empty list or {{"prompts": [...]}}'
        )
    prompts = [_parse_item(p, i, item) for i, item in enumerate(data)]
    seen: set[str] = set()
    for prompt in prompts:
        if prompt.id in seen:
            raise PromptsFileError(f"prompts file {p}: duplicate prompt id {prompt.id!r}")
        seen.add(prompt.id)
    return prompts


def _parse_item(path: Path, i: int, item: Any) -> Prompt:
    if isinstance(item, str):
        pid, text = f"p{i:03d}", item
    elif isinstance(item, dict) and isinstance(item.get("text"), str):
        pid, text = str(item.get("id", f"p{i:03d}")), item["text"]
    else:
        raise PromptsFileError(
            f"prompts file {path}: item {i} must be a string or an object with 'text'"
        )
    if not text.strip():
        raise PromptsFileError(f"prompts file {path}: item {i} is empty")
    return Prompt(id=pid, text=text)


def select_prompts(prompts: Sequence[Prompt], n: int) -> list[Prompt]:
    """The first ``n`` prompts, in file order; never repeats one (repeats would hit caches)."""
    if n < 1:
        raise ConfigurationError(f"queries must be >= 1, got {n}", setting="queries")
    if n > len(prompts):
        raise ConfigurationError(
            f"--queries {n} exceeds the {len(prompts)} distinct prompts available; "
            "pass a larger --prompts-file or fewer --queries",
            setting="queries",
        )
    return list(prompts[:n])
