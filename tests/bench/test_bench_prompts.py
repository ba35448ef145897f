"""The shipped prompt set, prompt-file parsing and the scenario registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from abstractcore.bench.prompts import (
    PromptsFileError,
    default_prompts_file,
    load_prompts,
    select_prompts,
)
from abstractcore.bench.scenarios import (
    Query,
    Scenario,
    get_scenario,
    plan_levels,
    register_scenario,
    scenario_names,
)
from abstractcore.errors import ConfigurationError

SHIPPED = (
    Path(__file__).resolve().parents[2] / "examples" / "assets" / "mlx_benchmark_prompts_128.json"
)


def test_shipped_prompts_are_128_distinct_and_varied() -> None:
    assert default_prompts_file() == SHIPPED
    prompts = load_prompts(SHIPPED)
    assert len(prompts) == 128
    assert len({p.text for p in prompts}) == 128
    assert len({p.id for p in prompts}) == 128
    lengths = sorted(len(p.text) for p in prompts)
    assert lengths[0] < 30 and lengths[-1] > 150  # short questions and long tasks
    # any prefix used by a sweep mixes lengths too
    first32 = [len(p.text) for p in prompts[:32]]
    assert max(first32) > 2 * min(first32)


def test_list_and_object_forms(tmp_path: Path) -> None:
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(["one?", "two?"]))
    assert [(p.id, p.text) for p in load_prompts(plain)] == [("p000", "one?"), ("p001", "two?")]
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"prompts": [{"id": "a", "text": "x"}, "y"]}))
    assert [(p.id, p.text) for p in load_prompts(wrapped)] == [("a", "x"), ("p001", "y")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        ("{not json", "not valid JSON"),
        ("[]", "non-empty list"),
        ('{"items": ["a"]}', "non-empty list"),
        ("[1]", "item 0"),
        ('["  "]', "item 0 is empty"),
        ('[{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]', "duplicate prompt id"),
    ],
)
def test_bad_prompt_files_name_the_problem(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "prompts.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PromptsFileError, match=message) as info:
        load_prompts(path)
    assert info.value.setting == "prompts_file"
    assert isinstance(info.value, ConfigurationError)


def test_selection_never_repeats_a_prompt() -> None:
    prompts = load_prompts(SHIPPED)
    assert [p.id for p in select_prompts(prompts, 3)] == [p.id for p in prompts[:3]]
    with pytest.raises(ConfigurationError, match="exceeds the 128 distinct prompts") as info:
        select_prompts(prompts, 129)
    assert info.value.setting == "queries"


def test_scenario_registry() -> None:
    queries = get_scenario("independent").build(load_prompts(SHIPPED), 4)
    assert len(queries) == 4 and len({q.id for q in queries}) == 4
    assert all(q.messages[0]["role"] == "user" for q in queries)
    with pytest.raises(ConfigurationError, match="unknown scenario"):
        get_scenario("nope")
    register_scenario(
        Scenario(
            "test-only",
            "one fixed query",
            lambda ps, n: [Query("q", [{"role": "user", "content": "hi"}])],
        )
    )
    try:
        assert "test-only" in scenario_names()
        assert get_scenario("test-only").build([], 1)[0].id == "q"
    finally:
        from abstractcore.bench import scenarios

        scenarios._SCENARIOS.pop("test-only")


def test_each_level_gets_fresh_prompts_then_wraps() -> None:
    prompts = load_prompts(SHIPPED)
    plan = plan_levels(get_scenario("independent"), prompts, 48, [1, 8, 32])
    ids = {level: [q.id for q in qs] for level, qs in plan.items()}
    assert ids[1] == [p.id for p in prompts[:48]]
    assert ids[8] == [p.id for p in prompts[48:96]]
    assert not set(ids[1]) & set(ids[8])  # no prompt cache can carry over between levels
    assert ids[32] == [p.id for p in prompts[96:]] + [p.id for p in prompts[:16]]
