"""The HTTP mapping layer over a scripted provider: validation, error shapes, streaming
framing, keep-alive, auth, limits, loading state. Real uvicorn on loopback, no model."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from abstractcore.server import create_app, get_state

from .conftest import API_KEY, ScriptedProvider, ThreadServer, wait_until

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def chat_body(content: str = "echo hello world", **extra: Any) -> dict[str, Any]:
    return {"model": "scripted-1", "messages": [{"role": "user", "content": content}], **extra}


def post(
    server: ThreadServer, path: str, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    return server.client.post(path, json=body, headers=AUTH if headers is None else headers)


def metric(server: ThreadServer, sample: str) -> float:
    """The value of one sample line (``name{labels}``) in /metrics; 0 when absent."""
    for line in server.client.get("/metrics").text.splitlines():
        if line.rsplit(" ", 1)[0] == sample:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def sse_events(lines: Iterator[str]) -> list[str]:
    """The raw non-empty SSE lines of a response (comments included)."""
    return [line for line in lines if line]


# ---------------------------------------------------------------------- happy paths
def test_chat_completion_shape_and_usage(scripted_server: ThreadServer) -> None:
    r = post(scripted_server, "/v1/chat/completions", chat_body(max_tokens=3))
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "chat.completion" and data["id"].startswith("chatcmpl-")
    assert data["choices"][0]["message"] == {
        "role": "assistant",
        "content": "hello world",
        "refusal": None,
    }
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 2,
        "total_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 3},
    }


def test_alias_accepted_and_reported_as_model_id(scripted_server: ThreadServer) -> None:
    r = post(scripted_server, "/v1/chat/completions", {**chat_body(), "model": "alias-1"})
    assert r.status_code == 200 and r.json()["model"] == "scripted-1"
    models = scripted_server.client.get("/v1/models", headers=AUTH).json()
    assert [m["id"] for m in models["data"]] == ["scripted-1", "alias-1"]


def test_parameters_reach_the_provider(
    scripted_server: ThreadServer, scripted: ScriptedProvider
) -> None:
    body = chat_body(
        max_completion_tokens=4,
        max_tokens=99,
        temperature=0.5,
        top_p=0.9,
        seed=3,
        stop=["x", "y"],
        user="u1",
        frequency_penalty=0,
        logprobs=False,
    )
    body["messages"].insert(
        0, {"role": "developer", "content": [{"type": "text", "text": "be brief"}]}
    )
    assert post(scripted_server, "/v1/chat/completions", body).status_code == 200
    req = scripted.requests[-1]
    assert (req.max_output_tokens, req.temperature, req.top_p, req.seed, req.stop) == (
        4,
        0.5,
        0.9,
        3,
        ["x", "y"],
    )
    assert [(m.role, m.content) for m in req.messages] == [
        ("system", "be brief"),
        ("user", "echo hello world"),
    ]


def test_output_cap_is_default_and_upper_bound(
    scripted_server: ThreadServer, scripted: ScriptedProvider
) -> None:
    post(scripted_server, "/v1/chat/completions", chat_body())
    post(scripted_server, "/v1/chat/completions", chat_body(max_tokens=1000))
    assert [r.max_output_tokens for r in scripted.requests] == [5, 5]  # the server's cap


def test_prompt_cache_key_from_body_or_header(
    scripted_server: ThreadServer, scripted: ScriptedProvider
) -> None:
    post(scripted_server, "/v1/chat/completions", chat_body(prompt_cache_key="conv-1"))
    post(
        scripted_server,
        "/v1/chat/completions",
        chat_body(),
        headers={**AUTH, "X-Prompt-Cache-Key": "conv-2"},
    )
    anthropic = {
        "model": "scripted-1",
        "max_tokens": 3,
        "messages": [{"role": "user", "content": "echo a"}],
    }
    post(
        scripted_server,
        "/v1/messages",
        anthropic,
        headers={"x-api-key": API_KEY, "X-Prompt-Cache-Key": "conv-3"},
    )
    post(scripted_server, "/v1/chat/completions", chat_body(user="user-4"))
    post(  # the body's key wins over the header, the header over `user`
        scripted_server,
        "/v1/chat/completions",
        chat_body(prompt_cache_key="conv-5", user="u"),
        headers={**AUTH, "X-Prompt-Cache-Key": "h"},
    )
    keys = [r.prompt_cache_key for r in scripted.requests]
    assert keys == ["conv-1", "conv-2", "conv-3", "user-4", "conv-5"]


def test_chat_stream_framing_with_usage(scripted_server: ThreadServer) -> None:
    body = chat_body("echo a b c", stream=True, stream_options={"include_usage": True})
    with scripted_server.client.stream(
        "POST", "/v1/chat/completions", json=body, headers=AUTH
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = sse_events(r.iter_lines())
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "a b c"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 10
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}


def test_completions_endpoint(scripted_server: ThreadServer, scripted: ScriptedProvider) -> None:
    r = post(
        scripted_server,
        "/v1/completions",
        {"model": "scripted-1", "prompt": ["echo one two"], "echo": False},
    )
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "text_completion" and r.json()["choices"][0]["text"] == "one two"
    body = {"model": "scripted-1", "prompt": "echo x y", "stream": True}
    with scripted_server.client.stream("POST", "/v1/completions", json=body, headers=AUTH) as resp:
        lines = sse_events(resp.iter_lines())
    texts = [json.loads(line[6:])["choices"][0]["text"] for line in lines[:-1]]
    assert "".join(texts) == "x y" and lines[-1] == "data: [DONE]"


def test_anthropic_message_and_stream_events(
    scripted_server: ThreadServer, scripted: ScriptedProvider
) -> None:
    body = {
        "model": "scripted-1",
        "max_tokens": 3,
        "system": [{"type": "text", "text": "sys"}],
        "stop_sequences": ["END"],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "echo p q r s"}]}],
    }
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    data = post(scripted_server, "/v1/messages", body, headers).json()
    assert data["type"] == "message" and data["content"] == [{"type": "text", "text": "p q r"}]
    assert data["stop_reason"] == "max_tokens"
    assert data["usage"] == {
        "input_tokens": 4,
        "output_tokens": 3,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 3,
    }
    assert scripted.requests[-1].messages[0].role == "system" and scripted.requests[-1].stop == [
        "END"
    ]
    with scripted_server.client.stream(
        "POST", "/v1/messages", json={**body, "stream": True}, headers=headers
    ) as r:
        names = [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"n": 2}, "n"),
        ({"bogus": 1}, "bogus"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"tools": [{"type": "function"}]}, "tools[0].function"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": True}, "max_completion_tokens"),
        ({"seed": 1.5}, "seed"),
        ({"stop": [""]}, "stop[0]"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": True, "stream_options": {"nope": 1}}, "stream_options.nope"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]},
            "messages[0].tool_call_id",
        ),
        ({"messages": [{"role": "user", "content": "x", "weird": 1}]}, "messages[0].weird"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0].type",
        ),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "only system"}]}, "messages"),
    ],
)
def test_chat_validation_names_the_field(
    scripted_server: ThreadServer, patch: dict[str, Any], param: str
) -> None:
    r = post(scripted_server, "/v1/chat/completions", {**chat_body(), **patch})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert param.split("[")[0].split(".")[0] in err["message"]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"temperature": 1.5}, "temperature"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            "messages.0.content.0.type",
        ),
        ({"tools": [{"name": "t"}]}, "tools"),
    ],
)
def test_anthropic_validation_in_anthropic_shape(
    scripted_server: ThreadServer, patch: dict[str, Any], field: str
) -> None:
    body = {
        "model": "scripted-1",
        "max_tokens": 3,
        "messages": [{"role": "user", "content": "echo x"}],
        **patch,
    }
    body = {k: v for k, v in body.items() if v is not None}
    r = post(scripted_server, "/v1/messages", body, {"x-api-key": API_KEY})
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
    assert field in r.json()["error"]["message"]


def test_unknown_model_is_404_in_each_shape(scripted_server: ThreadServer) -> None:
    r = post(scripted_server, "/v1/chat/completions", {**chat_body(), "model": "gpt-4o"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = post(
        scripted_server,
        "/v1/messages",
        {"model": "claude", "max_tokens": 1, "messages": []},
        {"x-api-key": API_KEY},
    )
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = post(scripted_server, "/v1/chat/completions", {**chat_body(), "model": 7})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_a_missing_model_means_the_served_one(scripted_server: ThreadServer) -> None:
    body = chat_body(max_tokens=3)
    del body["model"]
    r = post(scripted_server, "/v1/chat/completions", body)
    assert r.status_code == 200 and r.json()["model"] == "scripted-1", r.text
    anthropic = {"max_tokens": 3, "messages": [{"role": "user", "content": "echo a"}]}
    r = post(scripted_server, "/v1/messages", anthropic, {"x-api-key": API_KEY})
    assert r.status_code == 200 and r.json()["model"] == "scripted-1", r.text


def test_a_deeply_nested_body_is_a_400_naming_the_body(scripted_module: ScriptedProvider) -> None:
    deep = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # 200 kB: under 4 MiB
    server = ThreadServer(create_app(scripted_module, api_key=API_KEY)).start()
    try:
        _post_deep(server, deep)
    finally:
        server.stop()


def _post_deep(server: ThreadServer, deep: bytes) -> None:
    for path, headers, shape in (
        ("/v1/chat/completions", AUTH, "openai"),
        ("/v1/messages", {"x-api-key": API_KEY}, "anthropic"),
    ):
        r = server.client.post(
            path, content=deep, headers={**headers, "content-type": "application/json"}
        )
        assert r.status_code == 400, r.text
        body = r.json()
        assert "nested too deeply" in body["error"]["message"]
        assert (body.get("type") == "error") == (shape == "anthropic")


def test_draining_answers_503_so_a_proxy_goes_elsewhere(scripted_server: ThreadServer) -> None:
    state = get_state(scripted_server.server.config.app)
    state.draining = True
    try:
        health = scripted_server.client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "draining"
        r = post(scripted_server, "/v1/chat/completions", chat_body())
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
    finally:
        state.draining = False
    assert scripted_server.client.get("/health").status_code == 200


def test_malformed_and_non_object_json(scripted_server: ThreadServer) -> None:
    url = "/v1/chat/completions"
    for raw in (b'{"model": ', b"[1, 2]", b"", b"\xff\xfe"):
        r = scripted_server.client.post(
            url, content=raw, headers={**AUTH, "content-type": "application/json"}
        )
        assert r.status_code == 400, raw
        assert r.json()["error"]["type"] == "invalid_request_error"
    r = scripted_server.client.post(
        "/v1/messages", content=b"{oops", headers={"x-api-key": API_KEY}
    )
    assert r.status_code == 400 and r.json()["type"] == "error"


def test_oversized_body_413_declared_and_chunked(
    scripted_server: ThreadServer, scripted: ScriptedProvider
) -> None:
    url = "/v1/chat/completions"
    big = json.dumps(chat_body("echo " + "x" * 10_000)).encode()
    r = scripted_server.client.post(url, content=big, headers=AUTH)
    assert r.status_code == 413 and "4096" in r.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    r = scripted_server.client.post(url, content=chunks(), headers=AUTH)
    assert r.status_code == 413
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert scripted.requests == []
    assert post(scripted_server, "/v1/chat/completions", chat_body()).status_code == 200


# ---------------------------------------------------------------------- auth
def test_auth_missing_wrong_and_accepted(scripted_server: ThreadServer) -> None:
    r = post(scripted_server, "/v1/chat/completions", chat_body(), headers={})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["www-authenticate"] == "Bearer"
    r = post(
        scripted_server,
        "/v1/chat/completions",
        chat_body(),
        headers={"Authorization": "Bearer nope"},
    )
    assert r.status_code == 401
    r = post(scripted_server, "/v1/messages", {}, headers={"x-api-key": "nope"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert scripted_server.client.get("/v1/models").status_code == 401
    assert (
        post(
            scripted_server, "/v1/chat/completions", chat_body(), headers={"x-api-key": API_KEY}
        ).status_code
        == 200
    )
    assert scripted_server.client.get("/health").status_code == 200  # probes need no key


# ---------------------------------------------------------------------- provider errors
@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        ("OverloadedError", 429, "3"),
        ("RateLimitError", 429, "7"),
        ("ContextLengthError", 400, None),
        ("ProviderAPIError", 502, None),
        ("RuntimeError", 500, None),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_provider_errors_map_to_status(
    scripted_server: ThreadServer, error: str, status: int, retry_after: str | None, stream: bool
) -> None:
    r = post(scripted_server, "/v1/chat/completions", chat_body(f"fail {error}", stream=stream))
    assert r.status_code == status, r.text
    assert r.headers.get("retry-after") == retry_after
    assert "secret" not in r.text  # internals stay in the server log
    r = post(
        scripted_server,
        "/v1/messages",
        {
            "model": "scripted-1",
            "max_tokens": 2,
            "stream": stream,
            "messages": [{"role": "user", "content": f"fail {error}"}],
        },
        {"x-api-key": API_KEY},
    )
    assert r.status_code == status and r.json()["type"] == "error"


def test_error_after_first_chunk_is_an_error_event(scripted_server: ThreadServer) -> None:
    body = chat_body("fail-mid RuntimeError two", stream=True)
    with scripted_server.client.stream(
        "POST", "/v1/chat/completions", json=body, headers=AUTH
    ) as r:
        lines = sse_events(r.iter_lines())
    assert r.status_code == 200
    assert (
        json.loads(lines[-1][6:])["error"]["type"] == "server_error" and "[DONE]" not in lines[-1]
    )
    assert "secret" not in "".join(lines)
    anthropic = {
        "model": "scripted-1",
        "max_tokens": 5,
        "stream": True,
        "messages": [{"role": "user", "content": "fail-mid ProviderAPIError two"}],
    }
    with scripted_server.client.stream(
        "POST", "/v1/messages", json=anthropic, headers={"x-api-key": API_KEY}
    ) as r:
        lines = sse_events(r.iter_lines())
    assert lines[-2] == "event: error" and json.loads(lines[-1][6:])["error"]["type"] == "api_error"


# ---------------------------------------------------------------------- streaming behaviour
def test_keepalive_comments_while_waiting_for_first_token(
    scripted_server: ThreadServer, scripted: ScriptedProvider
) -> None:
    body = chat_body("gate", stream=True)
    with scripted_server.client.stream(
        "POST", "/v1/chat/completions", json=body, headers=AUTH
    ) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        seen: list[str] = []
        for line in lines:
            seen.append(line)
            if line == ": keep-alive" and seen.count(line) == 2:
                break
        scripted.release()
        seen.extend(line for line in lines if line)
    assert seen[-1] == "data: [DONE]" and any('"released"' in line for line in seen)

    anthropic = {
        "model": "scripted-1",
        "max_tokens": 5,
        "stream": True,
        "messages": [{"role": "user", "content": "gate"}],
    }
    with scripted_server.client.stream(
        "POST", "/v1/messages", json=anthropic, headers={"x-api-key": API_KEY}
    ) as r:
        names = [
            line[7:] for line in r.iter_lines() if line.startswith("event: ")
        ]  # gate already open
    assert names[0] == "message_start" and names[-1] == "message_stop"


def _raw_request(base_url: str, body: dict[str, Any]) -> socket.socket:
    host, port = base_url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_cancels_generation(
    scripted_server: ThreadServer, scripted: ScriptedProvider, stream: bool
) -> None:
    state = get_state(scripted_server.server.config.app)
    closed = 'abstractcore_requests_total{endpoint="chat_completions",status="499"}'
    before = metric(scripted_server, closed)
    sock = _raw_request(scripted_server.base_url, chat_body("hang", stream=stream))
    wait_until(lambda: state.in_flight == 1, timeout=5, what="the request to start")
    sock.close()
    wait_until(lambda: state.in_flight == 0, timeout=5, what="the generation to be cancelled")
    assert scripted.cancelled == 1
    assert metric(scripted_server, closed) == before + 1


# ------------------------------------------------------------- health, metrics, CORS, loading
def test_metrics_exposition(scripted_server: ThreadServer) -> None:
    ok = 'abstractcore_requests_total{endpoint="chat_completions",status="200"}'
    missing = 'abstractcore_requests_total{endpoint="chat_completions",status="404"}'
    ttft = 'abstractcore_time_to_first_token_seconds_count{endpoint="chat_completions"}'
    latency = 'abstractcore_request_duration_seconds_bucket{endpoint="chat_completions",le="+Inf"}'
    names = [
        ok,
        missing,
        ttft,
        latency,
        "abstractcore_completion_tokens_total",
        "abstractcore_cached_prompt_tokens_total",
    ]
    before = {n: metric(scripted_server, n) for n in names}
    post(scripted_server, "/v1/chat/completions", chat_body())
    post(scripted_server, "/v1/chat/completions", chat_body(stream=True))
    post(scripted_server, "/v1/chat/completions", {"model": "x"})
    r = scripted_server.client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    after = {n: metric(scripted_server, n) for n in names}
    assert {n: after[n] - before[n] for n in names} == {
        ok: 2,
        missing: 1,
        ttft: 2,
        latency: 2,  # timings only for successful requests
        "abstractcore_completion_tokens_total": 4,
        "abstractcore_cached_prompt_tokens_total": 6,
    }
    assert "abstractcore_requests_in_flight 0" in r.text
    for line in r.text.splitlines():  # every sample line is `name{labels} number`
        if not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])


def test_cors_off_by_default_and_on_when_configured(
    scripted_server: ThreadServer, scripted: ScriptedProvider
) -> None:
    pre = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
    r = scripted_server.client.options("/v1/chat/completions", headers=pre)
    assert "access-control-allow-origin" not in r.headers
    server = ThreadServer(create_app(scripted, cors_origins=["http://app.example"])).start()
    try:
        r = httpx.options(server.base_url + "/v1/chat/completions", headers=pre)
        assert (
            r.status_code == 200
            and r.headers["access-control-allow-origin"] == "http://app.example"
        )
    finally:
        server.stop()


def test_503_while_loading_then_ready(no_thread_leak: None) -> None:
    loaded = threading.Event()
    provider = ScriptedProvider()

    def factory() -> ScriptedProvider:
        loaded.wait(10)
        return provider

    server = ThreadServer(create_app(factory)).start()
    try:
        health = httpx.get(server.base_url + "/health")
        assert health.status_code == 503 and health.json()["status"] == "loading"
        r = httpx.post(server.base_url + "/v1/chat/completions", json=chat_body())
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "server_error"
        loaded.set()
        wait_until(
            lambda: httpx.get(server.base_url + "/health").status_code == 200,
            timeout=5,
            what="ready",
        )
        assert (
            httpx.post(server.base_url + "/v1/chat/completions", json=chat_body()).status_code
            == 200
        )
    finally:
        loaded.set()
        server.stop()


def test_request_paths_never_block_the_event_loop(
    scripted_server: ThreadServer, no_blocking_loop: None
) -> None:
    assert post(scripted_server, "/v1/chat/completions", chat_body()).status_code == 200
    assert post(scripted_server, "/v1/chat/completions", chat_body(stream=True)).status_code == 200
    body = {
        "model": "scripted-1",
        "max_tokens": 3,
        "stream": True,
        "messages": [{"role": "user", "content": "echo a"}],
    }
    assert post(scripted_server, "/v1/messages", body, {"x-api-key": API_KEY}).status_code == 200
    assert (
        post(scripted_server, "/v1/chat/completions", chat_body("fail RuntimeError")).status_code
        == 500
    )
    assert scripted_server.client.get("/metrics").status_code == 200
    assert scripted_server.client.get("/health").status_code == 200
