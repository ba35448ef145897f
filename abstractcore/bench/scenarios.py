"""Workload scenarios: how prompts become the queries of one level.

``independent``, ``multiturn``, ``shared-prefix`` (those two from cache_workloads.py) and
``structured`` are built in; :func:`register_scenario` adds others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import ConfigurationError
from .cache_workloads import build_multiturn, build_shared_prefix
from .prompts import Prompt, Query, select_prompts
from .schemas import generate_schemas, schema_prompt

__all__ = [
    "Query",
    "Scenario",
    "get_scenario",
    "plan_levels",
    "register_scenario",
    "scenario_names",
]


@dataclass(frozen=True)
class Scenario:
    """A named way to turn a prompt set into ``n`` queries."""

    name: str
    description: str
    build: Callable[[Sequence[Prompt], int], list[Query]]


def _independent(prompts: Sequence[Prompt], n: int) -> list[Query]:
    return [
        Query(id=p.id, messages=[{"role": "user", "content": p.text}])
        for p in select_prompts(prompts, n)
    ]


def _structured(prompts: Sequence[Prompt], n: int) -> list[Query]:
    """Every other query asks for a JSON object of its own generated schema (through
    ``response_format``, so a backend that enforces it constrains the answer); the others
    are the independent prompts. Answers are validated (the ``valid`` column)."""
    schemas = generate_schemas((n + 1) // 2)
    out: list[Query] = []
    for i, p in enumerate(select_prompts(prompts, n)):
        if i % 2:
            out.append(Query(id=p.id, messages=[{"role": "user", "content": p.text}]))
            continue
        schema = schemas[i // 2]
        fmt = {"type": "json_schema", "json_schema": {"name": schema["title"], "schema": schema}}
        out.append(
            Query(
                id=f"schema-{schema['title']}",
                messages=[{"role": "user", "content": schema_prompt(schema)}],
                options={"response_format": fmt},
                schema=schema,
            )
        )
    return out


_SCENARIOS: dict[str, Scenario] = {
    "independent": Scenario(
        "independent", "distinct single-turn prompts, no shared state", _independent
    ),
    "multiturn": Scenario(
        "multiturn",
        "8-turn conversations growing to ~1,500 tokens, one prompt_cache_key each",
        build_multiturn,
    ),
    "shared-prefix": Scenario(
        "shared-prefix",
        "distinct questions behind one ~1,000-token system prompt",
        build_shared_prefix,
    ),
    "structured": Scenario(
        "structured",
        "half the queries ask for JSON of their own generated schema (response_format)",
        _structured,
    ),
}


def register_scenario(scenario: Scenario) -> None:
    """Add (or replace) a scenario under its name."""
    _SCENARIOS[scenario.name] = scenario


def get_scenario(name: str) -> Scenario:
    """The scenario registered under ``name``."""
    try:
        return _SCENARIOS[name]
    except KeyError as exc:
        raise ConfigurationError(
            f"unknown scenario {name!r}; available: {', '.join(scenario_names())}",
            setting="scenario",
        ) from exc


def scenario_names() -> list[str]:
    """Registered scenario names, sorted."""
    return sorted(_SCENARIOS)


def plan_levels(
    scenario: Scenario, prompts: Sequence[Prompt], queries: int, levels: Sequence[int]
) -> dict[int, list[Query]]:
    """The queries of each level: level k takes the next ``queries`` prompts of the set.

    Levels use different prompts (wrapping around the set only when it runs out) so a server's
    prompt cache cannot answer a later level from an earlier level's identical prompts; every
    system gets the same prompts at the same level.
    """
    if not prompts:
        raise ConfigurationError("the prompt set is empty", setting="prompts_file")
    plan: dict[int, list[Query]] = {}
    offset = 0
    for level in levels:
        start = offset % len(prompts)
        plan[level] = scenario.build([*prompts[start:], *prompts[:start]], queries)
        offset += queries
    return plan
