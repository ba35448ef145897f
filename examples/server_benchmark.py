"""Server benchmark: `abstractcore serve` vs the in-process engine vs mlx-lm's server, one run.

    python examples/server_benchmark.py                # c=32: 3 rounds of 32 queries x 64 tokens
    python examples/server_benchmark.py --concurrency-levels 8 32 --rounds 5
    python examples/server_benchmark.py --skip-mlx-lm --flood-rounds 1

All systems are loaded at once and measured back to back in each round (the order rotates),
so per-round ratios cancel most background-load drift; the targets use their medians.
Every system gets the same prompts, sampling and client-side timing: the in-process engine
through ``llm.astream``; both HTTP servers through one lean streaming client (httpx, SSE,
``stream_options.include_usage``), so client cost is equal between them. Then a flood: 10x
``--max-queue`` concurrent clients against a server with a tiny queue; every request must end
with 200 or 429 (none hangs) and the server's RSS must stay bounded across rounds.
Targets (issue 6): server >= 0.95x engine and >= 1.2x mlx-lm's server at concurrency 32, p50
TTFT no worse than mlx-lm's server. Writes CSVs under test_results/server_benchmark/.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from abstractcore.bench.metrics import LevelSummary, QueryResult
from abstractcore.bench.mlx_lm_server import MLXLMServer
from abstractcore.bench.progress import make_progress
from abstractcore.bench.prompts import load_prompts
from abstractcore.bench.report import (
    format_table,
    output_paths,
    write_queries_csv,
    write_summary_csv,
)  # fmt: skip
from abstractcore.bench.runner import SweepResult, run_level
from abstractcore.bench.scenarios import Query, get_scenario
from abstractcore.bench.sweep_config import GenParams
from abstractcore.bench.systems import ProviderSystem, System, resident_bytes

PROMPTS = Path(__file__).resolve().parent / "assets" / "mlx_benchmark_prompts_128.json"
SERVER = "server"
_RETRIES = 8


class AbstractCoreServer:
    """`python -m abstractcore serve --port 0 ...` as a child process."""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None
        self.base_url = ""

    async def start(self, timeout_s: float = 180.0) -> str:
        """Launch and return the base URL once /health answers 200."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "abstractcore", "serve", "--port", "0", "--log-level", "warning",
            *self.args, stdout=asyncio.subprocess.PIPE, stderr=None,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = (await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)).decode()
        if "listening on " not in line:
            raise RuntimeError(f"abstractcore serve did not start: {line!r}")
        self.base_url = line.split()[-1]
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                try:
                    if (await client.get(self.base_url + "/health")).status_code == 200:
                        return self.base_url
                except httpx.TransportError:
                    pass
                if self.proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError("abstractcore serve did not become ready")
                await asyncio.sleep(0.1)

    def rss_mib(self) -> float | None:
        """The server's resident memory (Linux /proc), in MiB."""
        rss = resident_bytes(None if self.proc is None else self.proc.pid)
        return None if rss is None else rss / 2**20

    async def stop(self) -> int | None:
        """SIGTERM (graceful drain) and wait; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 60)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode


class StreamingHTTPSystem(System):
    """An OpenAI-compatible server measured with one lean streaming client."""

    def __init__(self, name: str, model: str, launch: Any, stop: Any, concurrency: int) -> None:
        super().__init__(name)
        self.model = model
        self._launch, self._stop = launch, stop
        self._limits = httpx.Limits(
            max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8
        )
        self.client: httpx.AsyncClient | None = None
        self.base_url = ""

    async def start(self) -> None:
        self.base_url = (await self._launch()).removesuffix("/v1")
        self.client = httpx.AsyncClient(base_url=self.base_url, timeout=600, limits=self._limits)

    async def run_query(
        self, index: int, query: Query, params: GenParams, concurrency: int
    ) -> QueryResult:
        assert self.client is not None
        body: dict[str, Any] = {
            "model": self.model, "messages": query.messages, "stream": True,
            "max_tokens": params.max_output_tokens, "temperature": params.temperature,
            "stream_options": {"include_usage": True},
        }  # fmt: skip
        if params.seed is not None:
            body["seed"] = params.seed
        start = time.perf_counter()
        first: float | None = None
        chunks, usage, finish, error = 0, None, None, None
        for attempt in range(_RETRIES + 1):
            try:
                async with self.client.stream("POST", "/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                        break
                    async for line in r.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        obj = json.loads(line[6:])
                        usage = obj.get("usage") or usage
                        for choice in obj.get("choices") or ():
                            if (choice.get("delta") or {}).get("content"):
                                chunks += 1
                                first = first or time.perf_counter()
                            finish = choice.get("finish_reason") or finish
                error = None
                break
            except httpx.TransportError as exc:
                # mlx-lm's server listens with a backlog of 5: a burst of connections gets
                # reset. Retry what never got a byte (as SDK clients do), timed from the start.
                error = f"{type(exc).__name__}: {exc}"
                if chunks or attempt == _RETRIES:
                    break
                await asyncio.sleep(0.05 * (attempt + 1))
            except Exception as exc:  # noqa: BLE001 - a failed request is a measurement
                error = f"{type(exc).__name__}: {exc}"
                break
        return QueryResult(
            system=self.name, concurrency=concurrency, query_index=index, prompt_id=query.id,
            prompt_tokens=(usage or {}).get("prompt_tokens", 0),
            output_tokens=(usage or {}).get("completion_tokens", chunks),
            ttft_s=None if first is None else first - start,
            duration_s=time.perf_counter() - start, finish_reason=finish, error=error,
        )  # fmt: skip

    def engine_stats(self) -> dict[str, Any] | None:
        if self.name != SERVER:
            return None
        engine: dict[str, Any] | None = httpx.get(self.base_url + "/health", timeout=5).json()[
            "engine"
        ]
        return engine

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        await self._stop()


async def flood(args: argparse.Namespace) -> dict[str, Any]:
    """10x --max-queue concurrent clients per round; statuses, hangs and RSS per round."""
    server = AbstractCoreServer(
        [
            "--model",
            args.model,
            "--max-queue",
            str(args.max_queue),
            "--max-batch-size",
            str(args.flood_batch_size),
        ]
    )
    await server.start()
    clients = 10 * args.max_queue
    body = {
        "model": args.model,
        "max_tokens": 16,
        "stream": True,
        "messages": [{"role": "user", "content": "Describe the ocean in one sentence."}],
    }
    rounds: list[dict[str, Any]] = []
    try:
        async with httpx.AsyncClient(
            base_url=server.base_url,
            timeout=args.flood_timeout_s,
            limits=httpx.Limits(max_connections=clients + 4),
        ) as client:

            async def one() -> str:
                try:
                    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                        await r.aread()
                        return str(r.status_code)
                except httpx.TimeoutException:
                    return "hung"
                except httpx.HTTPError as exc:
                    return type(exc).__name__

            for _ in range(args.flood_rounds):
                t0 = time.perf_counter()
                statuses = collections.Counter(
                    await asyncio.gather(*(one() for _ in range(clients)))
                )
                rounds.append(
                    {
                        "statuses": dict(statuses),
                        "wall_s": round(time.perf_counter() - t0, 2),
                        "rss_mib": server.rss_mib(),
                    }
                )
            health = (await client.get("/health")).json()
    finally:
        exit_code = await server.stop()
    ok = all(set(r["statuses"]) <= {"200", "429"} for r in rounds)
    return {
        "clients": clients,
        "max_queue": args.max_queue,
        "rounds": rounds,
        "all_200_or_429": ok,
        "health_after": health["status"],
        "exit_code": exit_code,
    }


def build_systems(args: argparse.Namespace, max_level: int) -> list[System]:
    systems: list[System] = []
    batch = str(max(32, max_level))
    if not args.skip_engine:
        systems.append(
            ProviderSystem(
                "engine", {"provider": "mlx", "model": args.model, "max_batch_size": int(batch)}
            )
        )
    ours = AbstractCoreServer(["--model", args.model, "--max-batch-size", batch])
    systems.append(StreamingHTTPSystem(SERVER, args.model, ours.start, ours.stop, max_level))
    if not args.skip_mlx_lm:
        mlx_lm = MLXLMServer(args.model, max_level, 180.0)
        systems.append(
            StreamingHTTPSystem(
                "mlx-lm-server", "default_model", mlx_lm.start, mlx_lm.stop, max_level
            )
        )
    return systems


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def targets(tagged: list[tuple[int, LevelSummary]], level: int) -> list[str]:
    """The issue's pass/fail lines for one level: medians over rounds of per-round ratios."""
    rounds: dict[int, dict[str, LevelSummary]] = collections.defaultdict(dict)
    for r, s in tagged:
        if s.concurrency == level and s.complete:
            rounds[r][s.system] = s
    out: list[str] = []
    for other, want in (("engine", 0.95), ("mlx-lm-server", 1.2)):
        ratios = [
            r[SERVER].throughput_tok_s / r[other].throughput_tok_s
            for r in rounds.values()
            if SERVER in r and other in r and r[other].throughput_tok_s
        ]
        ratio = _median(ratios)
        if ratio is not None:
            out.append(
                f"c={level}: server/{other} throughput {ratio:.2f}x, median of "
                f"{[round(x, 2) for x in ratios]} (target >= {want}x): "
                f"{'PASS' if ratio >= want else 'FAIL'}"
            )
    ours = _median(
        [r[SERVER].ttft_p50_s for r in rounds.values() if SERVER in r and r[SERVER].ttft_p50_s]
    )
    theirs = _median(
        [
            r["mlx-lm-server"].ttft_p50_s
            for r in rounds.values()
            if "mlx-lm-server" in r and r["mlx-lm-server"].ttft_p50_s
        ]
    )
    if ours is not None and theirs is not None:
        out.append(
            f"c={level}: p50 TTFT (median over rounds) server {ours:.2f} s "
            f"vs mlx-lm {theirs:.2f} s: "
            f"{'PASS' if ours <= theirs else 'FAIL'}"
        )
    return out


async def sweep(
    args: argparse.Namespace, systems: list[System], result: SweepResult
) -> list[tuple[int, LevelSummary]]:
    """Start every system, then run each level in ``--rounds`` rounds, rotating the order.

    All systems stay loaded (idle ones use no CPU) so that each round measures them back to
    back: on a shared machine, per-round ratios cancel most of the drift in background load.
    """
    params = GenParams(args.max_output_tokens, args.temperature)
    prompts = load_prompts(args.prompts_file)
    scenario = get_scenario("independent")
    progress = make_progress(args.progress_interval)
    started: list[System] = []
    tagged: list[tuple[int, LevelSummary]] = []
    try:
        for system in systems:
            progress.message(f"[{system.name}] starting")
            await system.start()
            started.append(system)
            await system.warmup(params)
        for r in range(args.rounds):
            for level in args.concurrency_levels:
                offset = (
                    r * len(args.concurrency_levels) + args.concurrency_levels.index(level)
                ) * args.queries
                offset %= len(prompts)
                queries = scenario.build([*prompts[offset:], *prompts[:offset]], args.queries)
                for system in started[r % len(started) :] + started[: r % len(started)]:
                    summary = await run_level(system, queries, level, params, result, progress)
                    tagged.append((r, summary))
    finally:
        progress.close()
        for system in started:
            await system.close()
    return tagged


async def run(args: argparse.Namespace) -> int:
    levels = tuple(args.concurrency_levels)
    result = SweepResult()
    tagged = await sweep(args, build_systems(args, max(levels)), result)
    print("\n" + format_table(result.summaries))
    print("\nmedians over rounds:")
    for name in dict.fromkeys(s.system for s in result.summaries):
        for level in levels:
            mine = [s for s in result.summaries if s.system == name and s.concurrency == level]
            tps = _median([s.throughput_tok_s for s in mine])
            ttft = _median([s.ttft_p50_s for s in mine if s.ttft_p50_s is not None])
            print(f"  {name:<14} c={level:<3} {tps or 0:7.1f} tok/s   p50 TTFT {ttft or 0:.2f} s")
    lines = [line for level in levels for line in targets(tagged, level)]
    paths = output_paths(Path(args.out_dir))
    write_summary_csv(paths.summary_csv, result.summaries)
    write_queries_csv(paths.queries_csv, result.queries)
    meta: dict[str, Any] = {"load_avg_end": os.getloadavg(), "args": vars(args)}
    if args.flood_rounds:
        report = await flood(args)
        meta["flood"] = report
        print("\nflood:", json.dumps(report))
        rss = [r["rss_mib"] and round(r["rss_mib"]) for r in report["rounds"]]
        lines.append(
            f"flood {report['clients']} clients x {len(report['rounds'])} rounds: every request "
            f"200 or 429: {'PASS' if report['all_200_or_429'] else 'FAIL'}; server RSS MiB after "
            f"each round {rss}; exit code after SIGTERM {report['exit_code']}"
        )
    paths.meta_json.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    print("\n" + "\n".join(lines))
    print(f"\nwrote {paths.summary_csv}, {paths.queries_csv}, {paths.meta_json}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompts-file", default=str(PROMPTS))
    p.add_argument("--queries", type=int, default=32, help="queries per level and round")
    p.add_argument("--rounds", type=int, default=3, help="rounds; systems rotate order each round")
    p.add_argument("--concurrency-levels", type=int, nargs="+", default=[32])
    p.add_argument("--max-output-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--skip-engine", action="store_true")
    p.add_argument("--skip-mlx-lm", action="store_true")
    p.add_argument(
        "--max-queue", type=int, default=4, help="queue of the flood server (clients = 10x)"
    )
    p.add_argument("--flood-batch-size", type=int, default=8)
    p.add_argument("--flood-rounds", type=int, default=3)
    p.add_argument("--flood-timeout-s", type=float, default=120.0)
    p.add_argument("--progress-interval", type=float, default=10.0)
    p.add_argument("--out-dir", default="test_results/server_benchmark")
    return asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
