"""The structured-output benchmark's parts: generated schemas, the ``structured`` scenario,
and validity in the summaries and CSVs."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from abstractcore.bench.metrics import QueryResult, summarize
from abstractcore.bench.prompts import default_prompts_file, load_prompts
from abstractcore.bench.report import format_table, write_queries_csv, write_summary_csv
from abstractcore.bench.scenarios import get_scenario
from abstractcore.bench.schemas import answer_is_valid, generate_schemas, long_schema
from abstractcore.bench.structured_bench import find_object


def _walk(schema: dict[str, Any]) -> list[dict[str, Any]]:
    out = [schema]
    for sub in schema.get("properties", {}).values():
        out += _walk(sub)
    if "items" in schema:
        out += _walk(schema["items"])
    return out


def test_two_hundred_distinct_deterministic_schemas_with_every_feature() -> None:
    schemas = generate_schemas(200)
    assert schemas == generate_schemas(200) and schemas != generate_schemas(200, seed=1)
    assert len({json.dumps(s, sort_keys=True) for s in schemas}) == 200
    nodes = [n for s in schemas for n in _walk(s)]
    for s in schemas:
        Draft202012Validator.check_schema(s)
    features = {
        "nested object": any(n["type"] == "object" for s in schemas for n in _walk(s)[1:]),
        "enum": any("enum" in n for n in nodes),
        "pattern": any("pattern" in n for n in nodes),
        "bounded array": any(n.get("type") == "array" and "maxItems" in n for n in nodes),
        "bounded number": any(n.get("type") == "number" and "maximum" in n for n in nodes),
        "bounded integer": any(n.get("type") == "integer" and "minimum" in n for n in nodes),
        "optional field": any(len(s["required"]) < len(s["properties"]) for s in schemas),
    }
    assert all(features.values()), features


def test_answers_are_valid_only_as_a_whole_object_of_the_schema() -> None:
    schema = generate_schemas(1)[0]
    required = {k: v for k, v in schema["properties"].items() if k in schema["required"]}
    assert not answer_is_valid(schema, "{}") or not required
    assert not answer_is_valid(schema, "not json")
    words = {"words": ["red"] * 64}
    assert answer_is_valid(long_schema(), json.dumps(words))
    assert not answer_is_valid(long_schema(), json.dumps({"words": ["red"] * 63}))
    assert not answer_is_valid(long_schema(), "```json\n" + json.dumps(words) + "\n```")
    assert find_object("Sure! ```json\n" + json.dumps(words) + "\n```") == words
    assert find_object('{ broken { "a": 1 } tail') == {"a": 1}
    assert find_object("no object") is None


def test_the_structured_scenario_constrains_every_other_query() -> None:
    queries = get_scenario("structured").build(load_prompts(default_prompts_file()), 8)
    schemas = [q.schema for q in queries]
    assert [s is not None for s in schemas] == [True, False] * 4
    assert len({json.dumps(s) for s in schemas if s}) == 4
    for q in queries[::2]:
        assert q.options["response_format"]["json_schema"]["schema"] == q.schema
        assert json.dumps(q.schema) in q.messages[0]["content"]
    assert all(not q.options for q in queries[1::2])


def test_validity_reaches_the_summary_table_and_csvs(tmp_path: Path) -> None:
    results = [
        QueryResult("engine", 2, 0, "a", output_tokens=5, duration_s=1.0, valid=True),
        QueryResult("engine", 2, 1, "b", output_tokens=5, duration_s=1.0, valid=False),
        QueryResult("engine", 2, 2, "c", output_tokens=5, duration_s=1.0),
        QueryResult("engine", 2, 3, "d", error="boom", valid=True),
    ]
    summary = summarize("engine", 2, results, 1.0)
    assert (summary.structured, summary.valid) == (2, 1)  # the failed query is not counted
    assert "valid JSON" in format_table([summary]) and "1/2" in format_table([summary])
    write_summary_csv(tmp_path / "s.csv", [summary])
    write_queries_csv(tmp_path / "q.csv", results)
    with (tmp_path / "s.csv").open() as fh:
        row = next(csv.DictReader(fh))
    assert (row["structured"], row["valid"]) == ("2", "1")
    with (tmp_path / "q.csv").open() as fh:
        assert [r["valid"] for r in csv.DictReader(fh)] == ["true", "false", "", "true"]
