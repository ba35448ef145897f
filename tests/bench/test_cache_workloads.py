"""The prompt-cache workloads behind ``--scenario multiturn`` and ``--scenario shared-prefix``."""

from __future__ import annotations

import itertools

from abstractcore.bench.cache_workloads import TURNS, shared_system_prompt
from abstractcore.bench.prompts import default_prompts_file, load_prompts
from abstractcore.bench.scenarios import get_scenario, scenario_names

SHIPPED = default_prompts_file()


def test_both_scenarios_are_registered() -> None:
    assert {"multiturn", "shared-prefix"} <= set(scenario_names())


def test_multiturn_builds_growing_conversations_under_one_key_each() -> None:
    queries = get_scenario("multiturn").build(load_prompts(SHIPPED), 2 * TURNS)
    assert len(queries) == 2 * TURNS
    first, second = queries[0::2], queries[1::2]  # turn-major: conversations interleave
    for conv in (first, second):
        assert len({q.options["prompt_cache_key"] for q in conv}) == 1
        assert [len(q.messages) for q in conv] == [2 * k + 1 for k in range(TURNS)]
        for prev, nxt in itertools.pairwise(conv):
            assert nxt.messages[: len(prev.messages)] == prev.messages  # history is resent
            assert nxt.messages[len(prev.messages)]["role"] == "assistant"
    assert first[0].options != second[0].options
    assert len(get_scenario("multiturn").build(load_prompts(SHIPPED), 5)) == 5


def test_shared_prefix_puts_one_long_system_prompt_before_distinct_questions() -> None:
    queries = get_scenario("shared-prefix").build(load_prompts(SHIPPED), 6)
    assert {q.messages[0]["content"] for q in queries} == {shared_system_prompt()}
    assert len({q.messages[1]["content"] for q in queries}) == 6
    assert len(shared_system_prompt().split()) > 500 and not queries[0].options
