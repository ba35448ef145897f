"""Structured-output benchmark on the in-process engine: validity, cost and compile time.

- ``validity``: ``n`` generated schemas (schemas.py), each asked for once with its grammar
  (``response_format`` json_schema) and once prompted only (the schema in the prompt, no
  grammar), greedy, ``concurrency`` requests at a time. Reports both validity rates: strict
  (the whole answer is one valid object) and, for prompted answers, lenient (a valid object
  somewhere in the answer, e.g. inside a code fence).
- ``cost``: one batch of ``rows`` requests, half constrained to a schema no answer completes
  within ``max_tokens`` (so every row of both batches decodes exactly ``max_tokens``), against
  the same batch without grammars, alternated ``repeats`` times (the prefix store is off, so
  every run pays its prefill). Reports the throughput ratio
  and whether every free row's text is identical in both batches.
- ``compile``: each schema's grammar compiled cold (first use, a fresh compiler) and again
  from the cache, on the caller's thread as the provider does it.

``examples/mlx_structured_benchmark.py`` is the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from ..errors import StructuredOutputError
from .prompts import default_prompts_file, load_prompts, select_prompts
from .schemas import answer_is_valid, generate_schemas, long_schema, schema_prompt

__all__ = ["find_object", "main", "run_compile", "run_cost", "run_validity"]

PARTS = ("compile", "cost", "validity")


def _format(schema: dict[str, Any]) -> dict[str, Any]:
    name = str(schema.get("title", "answer"))
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


def find_object(text: str) -> Any:
    """The first JSON value that parses at a ``{`` of ``text`` (None when none does)."""
    decoder = json.JSONDecoder()
    at = text.find("{")
    while at != -1:
        try:
            return decoder.raw_decode(text, at)[0]
        except ValueError:
            at = text.find("{", at + 1)
    return None


def _valid(schema: dict[str, Any], value: Any) -> bool:
    return value is not None and Draft202012Validator(schema).is_valid(value)


async def _gather(llm: Any, calls: Sequence[dict[str, Any]], concurrency: int) -> list[Any]:
    """Each call's response, or its exception. An answer that did not validate (cut off at
    max_output_tokens, say) raises StructuredOutputError carrying the response: that
    response is returned, its ``finish_reason`` says why."""
    gate = asyncio.Semaphore(concurrency)

    async def one(kwargs: dict[str, Any]) -> Any:
        async with gate:
            try:
                return await llm.agenerate(temperature=0, **kwargs)
            except StructuredOutputError as exc:
                return exc.response if exc.response is not None else exc
            except Exception as exc:  # noqa: BLE001 - a failed request is a measurement
                return exc

    return await asyncio.gather(*(one(k) for k in calls))


def _timed(llm: Any, calls: Sequence[dict[str, Any]], concurrency: int) -> tuple[list[Any], float]:
    start = time.perf_counter()
    out = asyncio.run(_gather(llm, calls, concurrency))
    return out, time.perf_counter() - start


def _tokens(results: Sequence[Any]) -> int:
    return sum(r.usage.completion_tokens for r in results if not isinstance(r, Exception))


def run_validity(
    llm: Any, n: int = 200, max_tokens: int = 192, concurrency: int = 32, seed: int = 0
) -> dict[str, Any]:
    """Validity of constrained vs prompted answers over ``n`` generated schemas."""
    schemas = generate_schemas(n, seed)
    base = [{"prompt": schema_prompt(s), "max_output_tokens": max_tokens} for s in schemas]
    report: dict[str, Any] = {"schemas": n, "max_tokens": max_tokens, "concurrency": concurrency}
    for mode in ("constrained", "prompted"):
        calls = [
            {**b, "response_format": _format(s)} if mode == "constrained" else b
            for b, s in zip(base, schemas)
        ]
        results, wall = _timed(llm, calls, concurrency)
        texts = ["" if isinstance(r, Exception) else r.content for r in results]
        finishes = [type(r).__name__ if isinstance(r, Exception) else r.finish_reason
                    for r in results]  # fmt: skip
        strict = sum(answer_is_valid(s, t) for s, t in zip(schemas, texts))
        lenient = sum(_valid(s, find_object(t)) for s, t in zip(schemas, texts))
        tokens = _tokens(results)
        report[mode] = {
            "valid_strict": strict,
            "valid_lenient": lenient,
            "strict_rate": strict / n,
            "lenient_rate": lenient / n,
            "finish_reasons": {f: finishes.count(f) for f in sorted(set(map(str, finishes)))},
            "output_tokens": tokens,
            "wall_s": round(wall, 2),
            "tok_s": round(tokens / wall, 1),
        }
    return report


def run_cost(
    llm: Any,
    prompts_file: Path,
    rows: int = 32,
    max_tokens: int = 64,
    repeats: int = 3,
) -> dict[str, Any]:
    """Throughput of a batch with half its rows constrained vs the same batch free."""
    schema = long_schema()
    free = [p.text for p in select_prompts(load_prompts(prompts_file), rows - rows // 2)]
    constrained_prompt = schema_prompt(schema)
    plain = [{"prompt": constrained_prompt, "max_output_tokens": max_tokens}] * (rows // 2)
    plain += [{"prompt": t, "max_output_tokens": max_tokens} for t in free]
    masked = [{**c, "response_format": _format(schema)} for c in plain[: rows // 2]]
    masked += plain[rows // 2 :]
    runs: dict[str, list[float]] = {"unconstrained": [], "half_constrained": []}
    free_texts: dict[str, list[list[str]]] = {"unconstrained": [], "half_constrained": []}
    tokens: dict[str, set[int]] = {"unconstrained": set(), "half_constrained": set()}
    _timed(llm, plain[:2], 2)  # warm-up, unmeasured
    for _ in range(repeats):
        for mode, calls in (("unconstrained", plain), ("half_constrained", masked)):
            results, wall = _timed(llm, calls, rows)
            errors = [r for r in results if isinstance(r, Exception)]
            if errors:
                raise RuntimeError(f"{mode} batch failed: {errors[0]!r}")
            runs[mode].append(_tokens(results) / wall)
            free_texts[mode].append([r.content for r in results[rows // 2 :]])
            tokens[mode] |= {r.usage.completion_tokens for r in results[: rows // 2]}
    med = {m: statistics.median(v) for m, v in runs.items()}
    return {
        "rows": rows,
        "constrained_rows": rows // 2,
        "max_tokens": max_tokens,
        "repeats": repeats,
        "tok_s": {m: [round(x, 1) for x in v] for m, v in runs.items()},
        "median_tok_s": {m: round(v, 1) for m, v in med.items()},
        "ratio_half_constrained_over_unconstrained": round(
            med["half_constrained"] / med["unconstrained"], 3
        ),
        "constrained_row_tokens": {m: sorted(v) for m, v in tokens.items()},
        "free_rows_identical": all(
            t == free_texts["unconstrained"][0] for v in free_texts.values() for t in v
        ),
    }


def run_compile(llm: Any, n: int = 200, seed: int = 0) -> dict[str, Any]:
    """Per-schema grammar compile time, cold and cached, in milliseconds."""
    from ..providers.mlx.grammar import GrammarCompiler
    from ..structured import response_format_from

    eos = [int(t) for t in llm.engine.tokenizer.eos_token_ids]
    compiler = GrammarCompiler(llm.model_path / "tokenizer.json", eos, llm.engine.vocab_size)
    start = time.perf_counter()
    compiler.llg_tokenizer()
    tokenizer_s = time.perf_counter() - start
    cold: list[float] = []
    cached: list[float] = []
    for schema in generate_schemas(n, seed):
        fmt = response_format_from(None, _format(schema))
        assert fmt is not None
        for out in (cold, cached):
            start = time.perf_counter()
            compiler.for_format(fmt, "response_format")
            out.append((time.perf_counter() - start) * 1000)

    def summary(ms: list[float]) -> dict[str, float]:
        ordered = sorted(ms)
        return {
            "median_ms": round(statistics.median(ms), 3),
            "p95_ms": round(ordered[int(0.95 * (len(ms) - 1))], 3),
            "max_ms": round(ordered[-1], 3),
        }

    return {
        "schemas": n,
        "tokenizer_build_s": round(tokenizer_s, 3),
        "cold": summary(cold),
        "cached": summary(cached),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--schemas", type=int, default=200, help="validity/compile schemas")
    p.add_argument("--max-tokens", type=int, default=192, help="validity answer cap")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--cost-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompts", type=Path, default=default_prompts_file())
    p.add_argument("--out", type=Path, default=Path("test_results/structured"))
    args = p.parse_args(argv)

    from ..providers.mlx.provider import MLXProvider

    report: dict[str, Any] = {"model": args.model}
    # The prefix store is off: the cost part runs the same batch several times, and each
    # run must pay its own prefill.
    options = {"max_batch_size": max(32, args.concurrency), "prefix_cache": False}
    with MLXProvider(args.model, **options) as llm:
        if "compile" in args.parts:
            report["compile"] = run_compile(llm, args.schemas)
        if "cost" in args.parts:
            report["cost"] = run_cost(
                llm, args.prompts, args.concurrency, args.cost_tokens, args.repeats
            )
        if "validity" in args.parts:
            report["validity"] = run_validity(llm, args.schemas, args.max_tokens, args.concurrency)
        report["grammars"] = llm.stats()["grammars"]
    text = json.dumps(report, indent=2)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"structured_{time.strftime('%Y%m%d_%H%M%S')}.json"
    path.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return 0
