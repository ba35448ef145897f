"""Backpressure and shutdown of `abstractcore serve` on the embedded model: a tiny queue gives
429s while the server stays healthy; SIGTERM drains in-flight requests and exits 0."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from .conftest import ServerProcess, wait_until

pytestmark = [pytest.mark.mlx, pytest.mark.slow]

BODY = {
    "model": "smollm2-135m",
    "max_tokens": 8,
    "messages": [{"role": "user", "content": "Tell me about the sea."}],
}


@pytest.mark.anyio
async def test_tiny_queue_gives_429_and_stays_healthy(
    serve_process: Callable[..., ServerProcess],
) -> None:
    server = serve_process("--max-queue", "2", "--max-batch-size", "1", "--log-level", "warning")
    async with httpx.AsyncClient(
        base_url=server.base_url, timeout=60, limits=httpx.Limits(max_connections=40)
    ) as client:

        async def one(i: int) -> httpx.Response:
            if i % 2:
                return await client.post("/v1/chat/completions", json=BODY)
            anthropic_body = {**BODY, "stream": True}
            async with client.stream("POST", "/v1/messages", json=anthropic_body) as r:
                await r.aread()
                return r

        responses = await asyncio.gather(*(one(i) for i in range(20)))  # 10x --max-queue
        statuses = [r.status_code for r in responses]
        assert set(statuses) == {200, 429}, statuses
        for r in responses:
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
                body = r.json()
                assert body["error"]["type"] == "rate_limit_error", body
        assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert server.health()["status"] == "ok"
    rejected = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("abstractcore_requests_total{") and 'status="429"' in line
    )
    assert rejected == statuses.count(429)
    assert server.stop() == 0


def _refused(base_url: str) -> bool:
    host, port = base_url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return True
    return False


def test_sigterm_drains_in_flight_request_and_exits_0(
    serve_process: Callable[..., ServerProcess],
) -> None:
    server = serve_process("--grace-period", "30", "--log-level", "warning")
    body = {
        **BODY,
        "max_tokens": 24,
        "stream": True,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Count from 1 to 100, separated by commas."}],
    }
    with (
        httpx.Client(base_url=server.base_url, timeout=60) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        seen = []
        for line in lines:
            seen.append(line)
            if '"content":"' in line and '"content":""' not in line:
                break  # generation is under way
        server.terminate()
        wait_until(lambda: _refused(server.base_url), timeout=10, what="the listener to close")
        seen.extend(lines)  # the in-flight stream still completes
    chunks = [json.loads(line[6:]) for line in seen if line.startswith("data: {")]
    assert [s for s in seen if s][-1] == "data: [DONE]"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert server.stop() == 0


def test_model_that_fails_to_load_exits_1(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "abstractcore",
            "serve",
            "--port",
            "0",
            "--model",
            str(tmp_path / "missing"),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert b"listening on" in proc.stdout and b"model path not found" in proc.stderr


@pytest.mark.anyio
async def test_kv_memory_budget_queues_and_refuses_with_a_typed_400(
    serve_process: Callable[..., ServerProcess],
) -> None:
    one_block = 256 * 30 * 2 * 3 * 64 * 4  # SmolLM2-135M's float32 KV for 256 tokens
    server = serve_process(
        "--kv-cache-bytes", str(one_block), "--mlx-cache-limit-bytes", str(64 << 20),
        "--log-level", "warning",
    )  # fmt: skip
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
        too_big = await client.post("/v1/chat/completions", json={**BODY, "max_tokens": 300})
        assert too_big.status_code == 400, too_big.text
        error = too_big.json()["error"]
        assert error["code"] == "context_length_exceeded" and "kv_cache_bytes" in error["message"]
        # Four requests, room for one at a time: they wait their turn, none fails.
        responses = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=BODY) for _ in range(4))
        )
        assert [r.status_code for r in responses] == [200] * 4
    memory = server.health()["engine"]["memory"]
    assert memory["kv_budget_bytes"] == one_block == memory["kv_reserved_peak_bytes"]
    assert memory["kv_waits"] >= 1 and memory["mlx_cache_limit_bytes"] == 64 << 20
    assert server.stop() == 0
