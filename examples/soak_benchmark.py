"""Soak benchmark: `abstractcore serve` under mixed traffic for a long time; is memory flat?

    python examples/soak_benchmark.py                      # 24 clients for 30 minutes
    python examples/soak_benchmark.py --minutes 5 --clients 8

Starts `abstractcore serve` on the embedded model and runs ``--clients`` clients that each
loop over a mix of requests: streamed answers, streams abandoned after a few chunks, long
prompts, multi-turn conversations with a ``prompt_cache_key`` (they fill the prompt cache
towards its budget) and bad bodies (which must get a 4xx). Every ``--sample-s`` it records
the server's resident memory (Linux ``/proc``) and what ``/health`` reports: MLX's active and
cached memory, the prompt cache's bytes and the KV reserved by running requests.

It prints the memory at the end of warm-up, at the middle and at the end of the run, the
growth over the second half (after the caches have reached their budgets the resident set
should stay flat), the status counts, and fails (exit 1) on any 5xx or a request stuck past
``--stuck-s``. Samples go to ``test_results/soak/soak_<time>.csv``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import csv
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from abstractcore.bench.child_server import ChildServer, free_port, python_command
from abstractcore.bench.systems import resident_bytes

OUT_DIR = Path("test_results") / "soak"
_SERVE = "from abstractcore.cli import main; sys.exit(main())\n"
_TOPICS = ["the sea", "a city at night", "bread", "trains", "winter", "a library", "rivers"]
_LONG = " ".join(
    f"Paragraph {i}: the committee reviewed the budget, the schedule and the risks again."
    for i in range(90)
)  # ~1,600 tokens


class Soak:
    """The clients, their counters, and the memory samples."""

    def __init__(self, base: str, args: argparse.Namespace) -> None:
        self.base = base
        self.args = args
        self.statuses: collections.Counter[str] = collections.Counter()
        self.stuck = 0
        self.samples: list[dict[str, float]] = []
        self.started = time.monotonic()

    async def client(self, index: int, client: httpx.AsyncClient, until: float) -> None:
        rng = random.Random(index)
        turn = 0
        while time.monotonic() < until:
            kind = rng.choices(
                ["stream", "abandon", "long", "conversation", "bad"], [40, 15, 15, 20, 10]
            )[0]
            t0 = time.monotonic()
            try:
                status = await asyncio.wait_for(
                    self._one(kind, client, rng, index, turn), self.args.stuck_s
                )
            except asyncio.TimeoutError:
                self.stuck += 1
                status = "stuck"
            except httpx.HTTPError as exc:
                status = f"transport:{type(exc).__name__}"
            self.statuses[f"{kind}:{status}"] += 1
            turn = turn + 1 if kind == "conversation" else turn
            if time.monotonic() - t0 < 0.05:
                await asyncio.sleep(0.05)

    async def _one(
        self, kind: str, client: httpx.AsyncClient, rng: random.Random, index: int, turn: int
    ) -> str:
        url = "/v1/chat/completions"
        topic = rng.choice(_TOPICS)
        if kind == "bad":
            body: Any = rng.choice(
                [{"messages": "not a list"}, {"messages": [{"role": "user"}], "max_tokens": -1},
                 {"model": 3, "messages": []}, "{not json"]
            )  # fmt: skip
            if isinstance(body, str):
                r = await client.post(
                    url, content=body, headers={"content-type": "application/json"}
                )
            else:
                r = await client.post(url, json=body)
            return str(r.status_code)
        messages = [{"role": "user", "content": f"Write two sentences about {topic}."}]
        body = {
            "messages": messages,
            "max_tokens": 64,
            "temperature": 0.7,
            "seed": rng.randrange(9999),
        }
        if kind == "long":
            body.update(
                messages=[{"role": "user", "content": _LONG + " Summarize."}], max_tokens=16
            )
        if kind == "conversation":  # a growing conversation per client and round of 6 turns
            key = f"soak-{index}-{turn // 6}"
            topic = _TOPICS[(index + turn // 6) % len(_TOPICS)]  # one topic per conversation
            messages = [{"role": "user", "content": f"Write two sentences about {topic}."}]
            history = [
                m
                for t in range(turn % 6)
                for m in (
                    {"role": "user", "content": f"Tell me fact {t} about {topic}."},
                    {"role": "assistant", "content": f"Fact {t}: it is well known."},
                )
            ]  # fmt: skip
            body.update(messages=[*history, *messages], prompt_cache_key=key, max_tokens=32)
        if kind in ("long", "conversation"):
            r = await client.post(url, json=body)
            return str(r.status_code)
        body["stream"] = True
        async with client.stream("POST", url, json=body) as r:
            chunks = 0
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    chunks += 1
                    if kind == "abandon" and chunks >= 3:
                        break  # closing the response mid-stream: the server must cancel it
            return str(r.status_code)

    async def sample(self, client: httpx.AsyncClient, pid: int | None, until: float) -> None:
        while time.monotonic() < until + 1:
            row: dict[str, float] = {"t_s": round(time.monotonic() - self.started, 1)}
            rss = resident_bytes(pid)
            row["rss_bytes"] = float(rss or 0)
            try:
                engine = (await client.get("/health")).json().get("engine") or {}
            except (httpx.HTTPError, json.JSONDecodeError):
                engine = {}
            memory = engine.get("memory") or {}
            for key in ("active_bytes", "cache_bytes", "peak_bytes", "kv_reserved_bytes"):
                row[f"mlx_{key}" if "kv" not in key else key] = float(memory.get(key, 0))
            row["prompt_cache_bytes"] = float((engine.get("prompt_cache") or {}).get("bytes", 0))
            row["active"] = float(engine.get("active", 0))
            self.samples.append(row)
            await asyncio.sleep(self.args.sample_s)


def _at(samples: list[dict[str, float]], t: float) -> dict[str, float]:
    return min(samples, key=lambda s: abs(s["t_s"] - t))


def _report(soak: Soak, args: argparse.Namespace, out: Path) -> int:
    samples = soak.samples
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(samples[0]))
        w.writeheader()
        w.writerows(samples)
    total = args.minutes * 60
    warm, mid, end = _at(samples, args.warmup_s), _at(samples, total / 2), samples[-1]
    gib = 2**30
    print(f"\n## Soak: {args.clients} clients, {args.minutes:g} min, mixed requests\n")
    print("| at | t s | RSS GiB | MLX active GiB | MLX cache GiB | prompt cache GiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, s in (("after warm-up", warm), ("middle", mid), ("end", end)):
        print(
            f"| {label} | {s['t_s']:.0f} | {s['rss_bytes'] / gib:.2f} | "
            f"{s['mlx_active_bytes'] / gib:.2f} | {s['mlx_cache_bytes'] / gib:.2f} | "
            f"{s['prompt_cache_bytes'] / gib:.2f} |"
        )
    peak = max(s["rss_bytes"] for s in samples)
    growth = (end["rss_bytes"] - mid["rss_bytes"]) / 2**20
    print(f"\nRSS max {peak / gib:.2f} GiB; second half growth {growth:+.0f} MiB")
    bad = {k: v for k, v in soak.statuses.items() if k.split(":")[1].startswith("5")}
    print("statuses:", dict(sorted(soak.statuses.items())))
    print(f"5xx: {sum(bad.values())}, stuck: {soak.stuck}; samples: {out}")
    return 1 if bad or soak.stuck else 0


async def _run(args: argparse.Namespace) -> int:
    port = free_port()
    serve = ChildServer("abstractcore-serve", 300.0)
    cmd = ["serve", "--model", args.model, "--port", str(port), "--log-level", "warning"]
    cmd += args.serve_args
    base = f"http://127.0.0.1:{port}"
    await serve.launch(python_command(_SERVE, cmd), base, "/health")
    try:
        soak = Soak(base, args)
        until = time.monotonic() + args.minutes * 60
        limits = httpx.Limits(max_connections=args.clients + 4)
        async with httpx.AsyncClient(base_url=base, timeout=args.stuck_s, limits=limits) as client:
            pid = None if serve.proc is None else serve.proc.pid
            sampler = asyncio.create_task(soak.sample(client, pid, until))
            await asyncio.gather(*(soak.client(i, client, until) for i in range(args.clients)))
            await sampler
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        return _report(soak, args, OUT_DIR / f"soak_{time.strftime('%Y%m%d-%H%M%S')}.csv")
    finally:
        await serve.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--clients", type=int, default=24)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--warmup-s", type=float, default=120.0, help="end of warm-up (default 120)")
    p.add_argument("--sample-s", type=float, default=10.0)
    p.add_argument(
        "--stuck-s", type=float, default=300.0, help="a request longer than this is stuck"
    )
    p.add_argument("serve_args", nargs="*", help="extra `abstractcore serve` flags, after --")
    args = p.parse_args(argv)
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
