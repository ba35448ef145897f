"""Prompt-cache benchmark: the three measurements of the prompt-cache targets, in one run.

- ``multiturn``: an 8-turn conversation growing to ~1,500 tokens on the embedded engine,
  with a ``prompt_cache_key`` and without one (the automatic prefix store); then the last
  turn alternately cold and warm, a few times each. Reports every turn's TTFT, the median
  last-turn ratio warm / cold, and whether every last-turn greedy text is identical.
- ``shared-prefix``: 32 concurrent requests behind one ~1,000-token system prompt: throughput
  with the prefix store, without it (``prefix_cache=False``), and mlx-lm's server.
- ``memory``: MLX peak memory while answering the 8th turn (1,500 tokens) from the cached
  7th turn, against the same turn answered cold.

``examples/prompt_cache_benchmark.py`` is the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cache_workloads import TURNS, build_shared_prefix, conversation_turns
from .metrics import LevelSummary
from .progress import make_progress
from .prompts import default_prompts_file, load_prompts, select_prompts
from .runner import SweepResult, run_level
from .sweep_config import MLX_LM_SERVER, GenParams
from .systems import MLXLMServerSystem, ProviderSystem, System

__all__ = ["main", "run_memory", "run_multiturn", "run_shared_prefix"]

PARTS = ("multiturn", "shared-prefix", "memory")


def _questions(prompts_file: Path) -> list[str]:
    return [p.text for p in select_prompts(load_prompts(prompts_file), TURNS)]


def _conversation(llm: Any, turns: list[list[dict[str, str]]], max_tokens: int, **kw: Any) -> Any:
    out = []
    for messages in turns:
        r = llm.generate(messages=messages, max_output_tokens=max_tokens, temperature=0, **kw)
        out.append(r)
    return out


def run_multiturn(
    model: str, prompts_file: Path, max_tokens: int = 16, repeats: int = 3
) -> dict[str, Any]:
    """TTFT of every turn with a key and without one; the last turn cold vs warm.

    The last turn is measured ``repeats`` times each way on one provider, alternating: cold
    under a fresh key (keyed requests never read other caches), warm under a key restored
    from the file saved after turn 7 (so every warm run starts from the same cache).
    The ratio is median(warm) / median(cold).
    """
    import statistics
    import tempfile

    from ..providers.mlx.provider import MLXProvider

    turns = conversation_turns(_questions(prompts_file))
    runs: dict[str, list[Any]] = {"cold": [], "warm": []}
    with MLXProvider(model) as llm, tempfile.TemporaryDirectory() as tmp:
        llm.generate("Say hello.", max_output_tokens=4)  # warm-up, unmeasured
        keyed = _conversation(llm, turns[:-1], max_tokens, prompt_cache_key="bench-conv")
        saved = llm.save_prompt_cache("bench-conv", Path(tmp) / "turn7")
        keyed += _conversation(llm, turns[-1:], max_tokens, prompt_cache_key="bench-conv")
        keyless = _conversation(llm, turns, max_tokens)
        for i in range(repeats):
            cold = _conversation(llm, turns[-1:], max_tokens, prompt_cache_key=f"cold-{i}")
            runs["cold"] += cold
            llm.load_prompt_cache(f"warm-{i}", saved)
            runs["warm"] += _conversation(llm, turns[-1:], max_tokens, prompt_cache_key=f"warm-{i}")
        cache_stats = llm.stats()["prompt_cache"]
    cold_s = [r.timing.ttft_s for r in runs["cold"]]
    warm_s = [r.timing.ttft_s for r in runs["warm"]]
    texts = {r.content for r in keyed[-1:] + keyless[-1:] + runs["cold"] + runs["warm"]}
    return {
        "prompt_tokens": [r.usage.prompt_tokens for r in keyed],
        "ttft_s": {
            "key": [r.timing.ttft_s for r in keyed],
            "no key (prefix store)": [r.timing.ttft_s for r in keyless],
        },
        "cached_tokens": {
            "key": [r.usage.cached_tokens for r in keyed],
            "no key (prefix store)": [r.usage.cached_tokens for r in keyless],
        },
        "last_turn_cold_ttft_s": cold_s,
        "last_turn_warm_ttft_s": warm_s,
        "last_turn_warm_cached_tokens": [r.usage.cached_tokens for r in runs["warm"]],
        "last_turn_ratio": statistics.median(warm_s) / statistics.median(cold_s),
        "last_turn_identical": len(texts) == 1,
        "last_turn_text": runs["cold"][0].content,
        "prompt_cache": cache_stats,
    }


def run_memory(model: str, prompts_file: Path, max_tokens: int = 16) -> dict[str, Any]:
    """MLX peak memory answering the 1,500-token 8th turn cold vs from the cached 7th turn."""
    from ..providers.mlx.provider import MLXProvider

    turns = conversation_turns(_questions(prompts_file))

    def reset(engine: Any) -> int:
        import mlx.core as mx

        mx.clear_cache()
        mx.reset_peak_memory()
        return int(mx.get_active_memory())

    def peak(engine: Any) -> int:
        import mlx.core as mx

        return int(mx.get_peak_memory())

    result: dict[str, Any] = {}
    runs: list[tuple[str, dict[str, Any], str | None]] = [
        ("cold", {"prompt_cache_bytes": 0}, None),
        ("reuse", {}, "bench-memory"),
    ]
    for name, options, key in runs:
        with MLXProvider(model, **options) as llm:
            kw = {} if key is None else {"prompt_cache_key": key}
            llm.generate(messages=turns[-2], max_output_tokens=max_tokens, temperature=0, **kw)
            before = llm.engine.call(reset)  # weights, plus the stored 7th turn when reusing
            r = llm.generate(messages=turns[-1], max_output_tokens=max_tokens, temperature=0, **kw)
            top = llm.engine.call(peak)
            result[name] = {
                "peak_bytes": top,
                "active_before_bytes": before,
                "peak_over_active_before_bytes": top - before,
                "cached_tokens": r.usage.cached_tokens,
                "prompt_tokens": r.usage.prompt_tokens,
            }
    result["reuse_over_cold"] = result["reuse"]["peak_bytes"] / result["cold"]["peak_bytes"]
    return result


async def _measure(system: System, queries: Sequence[Any], params: GenParams) -> LevelSummary:
    progress = make_progress(5.0)
    try:
        await system.start()
        await system.warmup(params)
        return await run_level(system, queries, len(queries), params, SweepResult(), progress)
    finally:
        progress.close()
        await system.close()


def run_shared_prefix(
    model: str, prompts_file: Path, queries: int = 32, max_tokens: int = 32, mlx_lm: bool = True
) -> dict[str, Any]:
    """Throughput of ``queries`` concurrent shared-prefix requests on each system."""
    qs = build_shared_prefix(load_prompts(prompts_file), queries)
    params = GenParams(max_output_tokens=max_tokens, temperature=0.0)
    batch = max(32, queries)
    systems: list[System] = [
        ProviderSystem("engine", {"provider": "mlx", "model": model, "max_batch_size": batch}),
        ProviderSystem(
            "engine prefix_cache=False",
            {"provider": "mlx", "model": model, "max_batch_size": batch, "prefix_cache": False},
        ),
    ]
    if mlx_lm:
        systems.append(MLXLMServerSystem(model, batch, 180.0))
    out: dict[str, Any] = {}
    for system in systems:
        s = asyncio.run(_measure(system, qs, params))
        out[system.name] = {
            "throughput_tok_s": s.throughput_tok_s,
            "wall_s": s.wall_s,
            "ttft_avg_s": s.ttft_avg_s,
            "ttft_p95_s": s.ttft_p95_s,
            "completed": s.completed,
            "output_tokens": s.output_tokens,
        }
    base = out["engine prefix_cache=False"]["throughput_tok_s"]
    out["speedup_vs_no_prefix"] = out["engine"]["throughput_tok_s"] / base if base else None
    server = out.get(MLX_LM_SERVER, {}).get("throughput_tok_s")
    if server:
        out["speedup_vs_mlx_lm_server"] = out["engine"]["throughput_tok_s"] / server
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen parts, print a JSON report and write it under ``--out-dir``."""
    p = argparse.ArgumentParser(description="Prompt-cache benchmark (see docs/concurrency.md).")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--prompts-file", type=Path, default=default_prompts_file())
    p.add_argument("--queries", type=int, default=32, help="shared-prefix requests (default 32)")
    p.add_argument("--max-output-tokens", type=int, default=32, help="shared-prefix output")
    p.add_argument("--no-mlx-lm-server", action="store_true", help="skip mlx-lm's server")
    p.add_argument("--out-dir", type=Path, default=Path("test_results") / "prompt_cache")
    args = p.parse_args(argv)
    report: dict[str, Any] = {"model": args.model}
    for part in args.parts:
        t0 = time.perf_counter()
        if part == "multiturn":
            report[part] = run_multiturn(args.model, args.prompts_file)
        elif part == "memory":
            report[part] = run_memory(args.model, args.prompts_file)
        else:
            report[part] = run_shared_prefix(
                args.model,
                args.prompts_file,
                args.queries,
                args.max_output_tokens,
                mlx_lm=not args.no_mlx_lm_server,
            )
        report[part]["elapsed_s"] = time.perf_counter() - t0
    text = json.dumps(report, indent=2, default=str)
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"prompt_cache_{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(text)
    return 0
