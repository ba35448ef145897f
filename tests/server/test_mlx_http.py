"""Raw HTTP against `abstractcore serve` on the embedded model: disconnects free engine slots,
limits and bad input, health and metrics."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import pytest

from .conftest import API_KEY, ServerProcess, wait_until

pytestmark = [pytest.mark.mlx, pytest.mark.slow]

AUTH = {"Authorization": f"Bearer {API_KEY}"}
LONG = [{"role": "user", "content": "Count from 1 to 2000, separated by commas, and never stop."}]


def engine(server: ServerProcess) -> dict[str, Any]:
    return server.health()["engine"]


def idle(server: ServerProcess) -> bool:
    h = server.health()
    return h["active"] == 0 and h["queued"] == 0 and h["in_flight"] == 0


def test_stream_disconnect_frees_the_slot(mlx_server: ServerProcess) -> None:
    cancelled = engine(mlx_server)["cancelled"]
    body = {"model": "smollm2-135m", "messages": LONG, "max_tokens": 4000, "stream": True}
    with (
        httpx.Client(base_url=mlx_server.base_url, headers=AUTH, timeout=30) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as r,
    ):
        assert r.status_code == 200
        lines = r.iter_lines()  # kept referenced: dropping it would close the connection
        for line in lines:
            if '"content":"' in line and '"content":""' not in line:
                break  # one token arrived: the request holds an engine slot
        assert mlx_server.health()["active"] == 1
    # leaving the block closed the connection mid-stream
    wait_until(lambda: idle(mlx_server), timeout=10, what="/health to show the slot free")
    assert engine(mlx_server)["cancelled"] == cancelled + 1


def test_non_stream_disconnect_frees_the_slot(mlx_server: ServerProcess) -> None:
    cancelled = engine(mlx_server)["cancelled"]
    payload = json.dumps({"model": "smollm2-135m", "messages": LONG, "max_tokens": 4000}).encode()
    host, port = mlx_server.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    try:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        wait_until(
            lambda: engine(mlx_server)["active"] == 1, timeout=10, what="the generation to start"
        )
    finally:
        sock.close()
    wait_until(lambda: idle(mlx_server), timeout=10, what="/health to show the slot free")
    assert engine(mlx_server)["cancelled"] == cancelled + 1


def test_bad_input_is_rejected_before_the_engine(mlx_server: ServerProcess) -> None:
    submitted = engine(mlx_server)["submitted"]
    with httpx.Client(base_url=mlx_server.base_url, headers=AUTH, timeout=30) as client:
        r = client.post(
            "/v1/chat/completions",
            content=b'{"model": "smollm2-135m", "messages": [',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
        big = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "x" * 70_000}]}
        r = client.post("/v1/chat/completions", json=big)
        assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
        r = client.post("/v1/messages", json={**big, "max_tokens": 4})
        assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"
        r = client.post(
            "/v1/chat/completions", json={"model": "smollm2-135m", "messages": FR, "top_p": 2}
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "top_p"
        assert (
            client.post(
                "/v1/chat/completions",
                json={"model": "smollm2-135m", "messages": FR},
                headers={"Authorization": "Bearer wrong"},
            ).status_code
            == 401
        )
    assert engine(mlx_server)["submitted"] == submitted
    assert mlx_server.health()["status"] == "ok"


FR = [{"role": "user", "content": "What is the capital of France?"}]


def test_metrics_and_health_report_the_engine(mlx_server: ServerProcess) -> None:
    with httpx.Client(base_url=mlx_server.base_url, headers=AUTH, timeout=30) as client:
        r = client.post(
            "/v1/chat/completions",
            json={
                "model": "smollm2-135m",
                "messages": FR,
                "max_tokens": 4,
                "prompt_cache_key": "conv-1",
            },
        )
        assert r.status_code == 200
        text = client.get("/metrics").text
    for name in (
        "abstractcore_requests_total{",
        "abstractcore_prompt_tokens_total ",
        "abstractcore_time_to_first_token_seconds_bucket{",
        "abstractcore_request_duration_seconds_sum{",
        "abstractcore_queue_depth ",
        "abstractcore_active_requests ",
        "abstractcore_batch_size ",
        "abstractcore_mlx_memory_active_bytes ",
        "abstractcore_mlx_memory_peak_bytes ",
    ):
        assert name in text, name
    health = mlx_server.health()
    assert health["engine"]["memory"]["active_bytes"] > 500e6  # the weights at least
    assert (
        health["ready"] is True
        and health["model"] == "smollm2-135m"
        and health["provider"] == "mlx"
    )
