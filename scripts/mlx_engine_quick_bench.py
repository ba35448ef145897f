"""Quick throughput check of the MLX engine against single-stream mlx_lm.generate, in one run.

    .venv/bin/python scripts/mlx_engine_quick_bench.py [--levels 8 32] [--queries 32]

Concurrency 1 alternates, prompt by prompt, the engine (``generate``) and mlx-lm's own
``stream_generate`` on the same token ids, so both see the same machine load; the ratio of
the two is the engine's single-stream overhead. Each higher level sends ``--queries``
distinct prompts x ``--max-output-tokens`` greedy tokens through ``agenerate`` under
``asyncio.gather`` with a semaphore, and reports tok/s, p50 TTFT, the mean decode batch and
the share of wall time spent outside ``BatchGenerator.next()``. The full benchmark (with
mlx-lm's server and serialized generation) is examples/mlx_concurrency_benchmark.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ROOT / "examples" / "assets" / "mlx_benchmark_prompts_128.json"


def _prompts(n: int) -> list[str]:
    data = json.loads(PROMPTS.read_text())
    return [p["text"] for p in data["prompts"][:n]]


def _single_stream(llm: Any, prompts: list[str], max_tokens: int) -> dict[str, float]:
    """Engine and mlx_lm.stream_generate, alternating prompt by prompt."""
    import mlx_lm

    from abstractcore.providers.mlx.loading import load_model

    model, tokenizer = load_model(llm.model_path)
    ids = [llm.tokenize(p) for p in prompts]
    llm.generate(prompts[0], max_output_tokens=4)  # warm-up both
    mlx_lm.generate(model, tokenizer, prompt=ids[0], max_tokens=4)
    engine_s = base_s = 0.0
    engine_n = base_n = 0
    for text, tokens in zip(prompts, ids):
        t0 = time.perf_counter()
        engine_n += llm.generate(text, max_output_tokens=max_tokens).usage.completion_tokens
        t1 = time.perf_counter()
        base_n += sum(
            1 for _ in mlx_lm.stream_generate(model, tokenizer, tokens, max_tokens=max_tokens)
        )
        t2 = time.perf_counter()
        engine_s += t1 - t0
        base_s += t2 - t1
    return {"engine_tok_s": engine_n / engine_s, "mlx_lm_tok_s": base_n / base_s}


async def _level(llm: Any, prompts: list[str], concurrency: int, max_tokens: int) -> dict[str, Any]:
    sem = asyncio.Semaphore(concurrency)

    async def one(p: str) -> Any:
        async with sem:
            return await llm.agenerate(p, max_output_tokens=max_tokens, temperature=0)

    before = llm.stats()
    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(p) for p in prompts))
    wall = time.perf_counter() - t0
    after = llm.stats()
    tokens = sum(r.usage.completion_tokens for r in results)
    in_next = after["time_in_next_s"] - before["time_in_next_s"]
    steps = after["decode_steps"] - before["decode_steps"]
    return {
        "concurrency": concurrency,
        "queries": len(prompts),
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "tok_s": round(tokens / wall, 1),
        "p50_ttft_s": round(statistics.median(r.timing.ttft_s for r in results), 2),
        "outside_next_share": round(1 - in_next / wall, 4),
        "mean_batch": round(
            (after["generated_tokens"] - before["generated_tokens"]) / max(1, steps), 1
        ),
    }


def main() -> None:
    """Run the single-stream comparison and the levels; print JSON rows and a summary."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--levels", type=int, nargs="*", default=[8, 32])
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--single-queries", type=int, default=6, help="prompts at concurrency 1")
    ap.add_argument("--max-output-tokens", type=int, default=64)
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--prefill-batch-size", type=int, default=None)
    ap.add_argument("--prefill-step-size", type=int, default=None)
    args = ap.parse_args()

    from abstractcore.providers.mlx.provider import MLXProvider

    options: dict[str, Any] = {"max_batch_size": args.max_batch_size}
    if args.prefill_batch_size:
        options["prefill_batch_size"] = args.prefill_batch_size
    if args.prefill_step_size:
        options["prefill_step_size"] = args.prefill_step_size
    with MLXProvider("smollm2-135m", **options) as llm:
        single = _single_stream(llm, _prompts(args.single_queries), args.max_output_tokens)
        print(json.dumps({"concurrency": 1, **single}), flush=True)
        rows = []
        for level in args.levels:
            row = asyncio.run(_level(llm, _prompts(args.queries), level, args.max_output_tokens))
            print(json.dumps(row), flush=True)
            rows.append(row)
    base = single["mlx_lm_tok_s"]
    print(f"\nsingle-stream mlx_lm.generate: {base:.1f} tok/s; engine at concurrency 1: "
          f"{single['engine_tok_s']:.1f} tok/s ({single['engine_tok_s'] / base:.2f}x)")  # fmt: skip
    head = ("conc", "tok/s", "x single", "p50 ttft", "outside next", "batch")
    widths = (5, 8, 9, 9, 13, 6)
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, widths)))
    for r in rows:
        print(f"{r['concurrency']:>5} {r['tok_s']:>8.1f} {r['tok_s'] / base:>9.2f} "
              f"{r['p50_ttft_s']:>8.2f}s {r['outside_next_share']:>12.1%} "
              f"{r['mean_batch']:>6.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
