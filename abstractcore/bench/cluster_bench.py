"""Scale-out benchmark: instances behind nginx (``abstractcore cluster``), in one run.

- ``multiturn``: ``conversations`` conversations of ``turns`` turns (the ``multiturn``
  workload's canned history, growing to ~1,100 tokens at turn 6), all conversations at once,
  each turn sent when its previous turn returned and a seeded "think time" (0 to
  ``think_s``) passed, through the openai-compatible provider with a ``prompt_cache_key``
  (sent as ``X-Prompt-Cache-Key``). Per policy: the cache hit rate (a turn after the first
  is a hit when the instance that answers it reuses at least the whole previous turn's
  prompt, i.e. it holds the conversation's latest cache; the round-robin expectation over N
  instances is about 1/N) and the last turn's p50 TTFT. The think times keep the machine
  from saturating (so TTFT shows prefill more than queueing), and without them
  conversations advancing in lockstep would meet round-robin in the same order every turn:
  a multiple-of-N count of them would stick to one instance each by accident.
- ``throughput``: ``queries`` independent prompts at ``concurrency`` through nginx in front
  of 1 instance, of 2 instances, and the single instance directly (the proxy's overhead),
  alternated ``repeats`` times.

``examples/cluster_benchmark.py`` is the command line. Needs nginx.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from ..cluster import Cluster
from ..factory import create_llm
from .cache_workloads import conversation_turns
from .mlx_lm_server import free_port
from .prompts import default_prompts_file, load_prompts, select_prompts

__all__ = ["chat_completions_served", "main", "run_multiturn", "run_throughput"]

PARTS = ("multiturn", "throughput")


async def _turn(llm: Any, messages: list[dict[str, str]], key: str | None, tokens: int) -> Any:
    """One streamed request: (TTFT, usage)."""
    start = time.perf_counter()
    first: float | None = None
    usage = None
    kwargs: dict[str, Any] = {"max_output_tokens": tokens, "temperature": 0}
    if key is not None:
        kwargs["prompt_cache_key"] = key
    async for chunk in llm.astream(messages=messages, **kwargs):
        if chunk.content and first is None:
            first = time.perf_counter()
        if chunk.usage is not None:
            usage = chunk.usage
    return (None if first is None else first - start), usage


async def _conversations(
    url: str, model: str, plans: list[list[list[dict[str, str]]]], tokens: int, think_s: float
) -> Any:
    llm = create_llm("openai-compatible", model=model, base_url=f"{url}/v1")
    rng = random.Random(0)  # the same think times for every policy
    pauses = [[rng.uniform(0, think_s) for _ in turns] for turns in plans]
    try:

        async def one(c: int, turns: list[list[dict[str, str]]]) -> list[Any]:
            out = []
            for t, pause in zip(turns, pauses[c]):
                await asyncio.sleep(pause)
                out.append(await _turn(llm, t, f"bench-conv-{c}", tokens))
            return out

        return await asyncio.gather(*(one(c, t) for c, t in enumerate(plans)))
    finally:
        await llm.aclose()


def run_multiturn(
    model: str,
    prompts_file: Path,
    *,
    instances: int = 2,
    conversations: int = 8,
    turns: int = 6,
    max_tokens: int = 16,
    think_s: float = 3.0,
    repeats: int = 2,
    policies: Sequence[str] = ("affinity", "round-robin"),
) -> dict[str, Any]:
    """Hit rate and last-turn TTFT per policy: a fresh cluster (cold caches) per run, the
    policies alternated ``repeats`` times; TTFTs pooled over the runs of a policy."""
    questions = [p.text for p in select_prompts(load_prompts(prompts_file), conversations * turns)]
    plans = [
        conversation_turns(questions[c * turns : (c + 1) * turns]) for c in range(conversations)
    ]
    report: dict[str, Any] = {"instances": instances, "conversations": conversations,
                              "turns": turns, "max_tokens": max_tokens,
                              "think_s": think_s, "repeats": repeats}  # fmt: skip
    runs: dict[str, list[tuple[list[int], list[list[Any]]]]] = {p: [] for p in policies}
    for _ in range(repeats):
        for policy in policies:
            with tempfile.TemporaryDirectory() as tmp, Cluster(
                Path(tmp), instances=instances, serve_args=["--model", model], port=free_port(),
                policy=policy,
            ) as cluster:  # fmt: skip
                results = asyncio.run(
                    _conversations(cluster.url, model, plans, max_tokens, think_s)
                )
                runs[policy].append(
                    ([chat_completions_served(u) for u in cluster.upstreams], results)
                )
    for policy, policy_runs in runs.items():
        convs = [conv for _, results in policy_runs for conv in results]
        pairs = [(prev, usage) for conv in convs for (_, prev), (_, usage) in zip(conv, conv[1:])]
        later = [usage for conv in convs for _, usage in conv[1:]]
        last = [conv[-1][0] for conv in convs if conv[-1][0] is not None]
        report[policy] = {
            "requests_per_instance": [counts for counts, _ in policy_runs],
            "hit_rate": round(
                sum(u.cached_tokens >= p.prompt_tokens for p, u in pairs) / len(pairs), 3
            ),
            "last_turn_ttft_p50_s": round(statistics.median(last), 3),
            "last_turn_ttft_p50_s_per_run": [
                round(statistics.median(c[-1][0] for c in results if c[-1][0] is not None), 3)
                for _, results in policy_runs
            ],
            "last_turn_prompt_tokens": convs[0][-1][1].prompt_tokens,
            "cached_share": round(
                sum(u.cached_tokens for u in later) / sum(u.prompt_tokens for u in later), 3
            ),
        }
    if "affinity" in report and "round-robin" in report:
        report["last_turn_ttft_affinity_over_round_robin"] = round(
            report["affinity"]["last_turn_ttft_p50_s"]
            / report["round-robin"]["last_turn_ttft_p50_s"],
            3,
        )
    return report


async def _level(
    url: str, model: str, questions: Sequence[str], concurrency: int, tokens: int
) -> float:
    llm = create_llm("openai-compatible", model=model, base_url=f"{url}/v1")
    gate = asyncio.Semaphore(concurrency)
    try:

        async def one(q: str) -> int:
            async with gate:
                r = await llm.agenerate(q, max_output_tokens=tokens, temperature=0)
                return int(r.usage.completion_tokens)

        start = time.perf_counter()
        produced = sum(await asyncio.gather(*(one(q) for q in questions)))
        return produced / (time.perf_counter() - start)
    finally:
        await llm.aclose()


def run_throughput(
    model: str,
    prompts_file: Path,
    *,
    queries: int = 32,
    concurrency: int = 16,
    max_tokens: int = 32,
    repeats: int = 2,
) -> dict[str, Any]:
    """tok/s through nginx with 1 and 2 instances, and the single instance directly."""
    prompts = [p.text for p in load_prompts(prompts_file)]
    # Runs reuse prompts (the set is finite): the instances' prefix store is off, so no run
    # is answered from an earlier run's cache.
    serve_args = ["--model", model, "--no-prefix-cache"]
    runs: dict[str, list[float]] = {"direct_1": [], "nginx_1": [], "nginx_2": []}
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b, Cluster(
        Path(a), instances=1, serve_args=serve_args, port=free_port(), policy="least-conn"
    ) as one, Cluster(
        Path(b), instances=2, serve_args=serve_args, port=free_port(), policy="least-conn"
    ) as two:  # fmt: skip
        targets = {"direct_1": f"http://{one.upstreams[0]}", "nginx_1": one.url, "nginx_2": two.url}
        asyncio.run(_level(one.url, model, prompts[:2], 2, 4))  # warm-up, unmeasured
        asyncio.run(_level(two.url, model, prompts[:4], 4, 4))
        for r in range(repeats):
            for i, (name, url) in enumerate(targets.items()):
                start = ((r * len(targets) + i) * queries) % len(prompts)
                batch = [*prompts, *prompts][start : start + queries]
                runs[name].append(asyncio.run(_level(url, model, batch, concurrency, max_tokens)))
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "queries": queries,
        "concurrency": concurrency,
        "max_tokens": max_tokens,
        "repeats": repeats,
        "tok_s": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "median_tok_s": {k: round(v, 1) for k, v in med.items()},
        "two_over_one_instance": round(med["nginx_2"] / med["nginx_1"], 3),
        "nginx_over_direct": round(med["nginx_1"] / med["direct_1"], 3),
    }


def chat_completions_served(upstream: str) -> int:
    """Chat completions the instance at ``upstream`` answered, from its ``/metrics``."""
    text = httpx.get(f"http://{upstream}/metrics", timeout=5).text
    sample = r'^abstractcore_requests_total\{endpoint="chat_completions"[^}]*\} (\S+)$'
    return int(sum(float(v) for v in re.findall(sample, text, re.M)))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--instances", type=int, default=2, help="instances for multiturn")
    p.add_argument("--conversations", type=int, default=8)
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--think", type=float, default=3.0, help="max seconds between turns")
    p.add_argument("--queries", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--prompts", type=Path, default=default_prompts_file())
    p.add_argument("--out", type=Path, default=Path("test_results/cluster"))
    args = p.parse_args(argv)
    report: dict[str, Any] = {"model": args.model}
    if "multiturn" in args.parts:
        report["multiturn"] = run_multiturn(
            args.model, args.prompts, instances=args.instances,
            conversations=args.conversations, turns=args.turns, think_s=args.think,
            repeats=args.repeats,
        )  # fmt: skip
    if "throughput" in args.parts:
        report["throughput"] = run_throughput(
            args.model, args.prompts, queries=args.queries, concurrency=args.concurrency,
            repeats=args.repeats,
        )  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"cluster_{time.strftime('%Y%m%d_%H%M%S')}.json"
    path.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return 0
