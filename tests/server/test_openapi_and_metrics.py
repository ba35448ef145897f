"""The OpenAPI document (/openapi.json, /docs) agrees with what the server accepts and answers;
/metrics comes from prometheus-client, one registry per app."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from abstractcore.server import create_app

from .conftest import API_KEY, ScriptedProvider, ThreadServer

AUTH = {"Authorization": f"Bearer {API_KEY}"}
BUCKETS = ["0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "30.0"]


@pytest.fixture(scope="module")
def document(scripted_server: ThreadServer) -> dict[str, Any]:
    r = scripted_server.client.get("/openapi.json")  # no key needed, like /health
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


def validator(doc: dict[str, Any], ref: str) -> Draft202012Validator:
    """A validator of ``ref`` (``#/components/schemas/X``) resolving refs in ``doc``."""
    return Draft202012Validator({**doc, "$ref": ref})


def response_ref(doc: dict[str, Any], path: str, method: str, status: int) -> str:
    content = doc["paths"][path][method]["responses"][str(status)]["content"]
    ref: str = content["application/json"]["schema"]["$ref"]
    return ref


def test_document_lists_routes_bodies_and_responses(document: dict[str, Any]) -> None:
    paths = document["paths"]
    assert set(paths) == {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/messages",
        "/health",
        "/metrics",
    }
    bodies = {
        "/v1/chat/completions": "ChatCompletionRequest",
        "/v1/completions": "CompletionRequest",
        "/v1/messages": "MessagesRequest",
    }
    for path, model in bodies.items():
        op = paths[path]["post"]
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{model}"}
        assert {"200", "400", "401", "404", "413", "429", "500", "502", "503"} <= set(
            op["responses"]
        )
        assert "text/event-stream" in op["responses"]["200"]["content"]
        assert op["security"] == [{"bearer": []}, {"apiKey": []}]
    chat = document["components"]["schemas"]["ChatCompletionRequest"]
    assert chat["additionalProperties"] is False
    assert {"tools", "tool_choice", "parallel_tool_calls", "response_format", "logprobs"} <= set(
        chat["properties"]
    )
    assert response_ref(document, "/v1/messages", "post", 400).endswith("/AnthropicErrorBody")
    assert response_ref(document, "/v1/chat/completions", "post", 400).endswith("/OpenAIErrorBody")


def test_documented_examples_are_served(
    scripted_server: ThreadServer, document: dict[str, Any]
) -> None:
    headers = {**AUTH, "x-api-key": API_KEY}
    seen = 0
    for path, item in document["paths"].items():
        media = item.get("post", {}).get("requestBody", {}).get("content", {})
        for name, example in media.get("application/json", {}).get("examples", {}).items():
            assert example["value"]["model"] == "scripted-1"  # the served id, once loaded
            r = scripted_server.client.post(path, json=example["value"], headers=headers)
            assert r.status_code == 200, (path, name, r.text)
            seen += 1
    assert seen == 14


def test_docs_page(scripted_server: ThreadServer) -> None:
    r = scripted_server.client.get("/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower() and "/openapi.json" in r.text


def test_documented_request_schemas_agree_with_the_server(
    scripted_server: ThreadServer, document: dict[str, Any]
) -> None:
    chat = validator(document, "#/components/schemas/ChatCompletionRequest")
    good = {
        "model": "scripted-1",
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "echo sunny"},
        ],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "json_object"},
        "frequency_penalty": 0,
        "stop": "END",
    }  # fmt: skip
    assert list(chat.iter_errors(good)) == []
    body = {**good, "response_format": {"type": "text"}}
    assert scripted_server.client.post("/v1/chat/completions", json=body, headers=AUTH).is_success
    for bad in ({"bogus": 1}, {"frequency_penalty": 0.5}, {"tool_choice": "sometimes"}):
        assert list(chat.iter_errors({**good, **bad})), bad
        r = scripted_server.client.post("/v1/chat/completions", json={**good, **bad}, headers=AUTH)
        assert r.status_code == 400
    messages = validator(document, "#/components/schemas/MessagesRequest")
    good = {
        "model": "scripted-1",
        "max_tokens": 3,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "echo a"}]}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any"},
    }
    assert list(messages.iter_errors(good)) == []
    assert list(messages.iter_errors({**good, "max_tokens": 0}))


def _check(doc: dict[str, Any], path: str, method: str, r: httpx.Response) -> None:
    errors = list(
        validator(doc, response_ref(doc, path, method, r.status_code)).iter_errors(r.json())
    )
    assert errors == [], (r.json(), errors[0].message)


def test_responses_match_their_documented_shapes(
    scripted_server: ThreadServer, document: dict[str, Any]
) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    client = scripted_server.client
    chat = "/v1/chat/completions"
    for payload in (
        {
            "messages": [{"role": "user", "content": "say hello"}],
            "logprobs": True,
            "top_logprobs": 1,
        },
        {"messages": [{"role": "user", "content": "call f {}"}], "tools": [tool]},
        {"messages": [{"role": "user", "content": "echo a b c d e f g"}]},  # cut: length
        {"messages": [{"role": "tool", "content": "x"}]},  # 400
    ):
        _check(
            document,
            chat,
            "post",
            client.post(chat, json={"model": "scripted-1", **payload}, headers=AUTH),
        )
    _check(
        document,
        chat,
        "post",
        client.post(chat, json={"model": "gpt-4o", "messages": []}, headers=AUTH),
    )
    _check(document, chat, "post", client.post(chat, json={}))  # 401
    r = client.post(
        "/v1/completions", json={"model": "scripted-1", "prompt": "echo x"}, headers=AUTH
    )
    _check(document, "/v1/completions", "post", r)
    _check(document, "/v1/models", "get", client.get("/v1/models", headers=AUTH))
    anthropic = {"x-api-key": API_KEY}
    for content in ("echo hi", "call f {}"):
        payload = {
            "model": "scripted-1",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": content}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        }
        _check(
            document,
            "/v1/messages",
            "post",
            client.post("/v1/messages", json=payload, headers=anthropic),
        )
    _check(
        document,
        "/v1/messages",
        "post",
        client.post("/v1/messages", json={"model": "scripted-1"}, headers=anthropic),
    )
    _check(document, "/health", "get", client.get("/health"))  # fmt: skip


# ---------------------------------------------------------------------- metrics
class StatsProvider(ScriptedProvider):
    """A provider reporting engine stats, as the MLX engine does."""

    def stats(self) -> dict[str, Any]:
        return {"queued": 2, "active": 1, "steps": 10, "cache_hits": 4, "prefill_tok_s": 1.5,
                "draining": True, "name": "engine"}  # fmt: skip


@pytest.fixture
def two_servers() -> Iterator[tuple[ThreadServer, ThreadServer]]:
    first = ThreadServer(create_app(StatsProvider())).start()
    second = ThreadServer(create_app(ScriptedProvider())).start()
    yield first, second
    first.stop()
    second.stop()


def sample(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.rsplit(" ", 1)[0] == name:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_each_app_has_its_own_registry(two_servers: tuple[ThreadServer, ThreadServer]) -> None:
    first, second = two_servers
    body = {"model": "scripted-1", "messages": [{"role": "user", "content": "echo a b"}]}
    assert first.client.post("/v1/chat/completions", json=body).status_code == 200
    ok = 'abstractcore_requests_total{endpoint="chat_completions",status="200"}'
    one, other = first.client.get("/metrics").text, second.client.get("/metrics").text
    assert sample(one, ok) == 1.0 and sample(one, "abstractcore_completion_tokens_total") == 2.0
    assert (
        sample(other, ok) is None and sample(other, "abstractcore_completion_tokens_total") == 0.0
    )


def test_metric_names_buckets_and_engine_stats(
    two_servers: tuple[ThreadServer, ThreadServer],
) -> None:
    server = two_servers[0]
    body = {"model": "scripted-1", "messages": [{"role": "user", "content": "echo a"}]}
    server.client.post("/v1/chat/completions", json=body)
    r = server.client.get("/metrics")
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = r.text
    latency = 'abstractcore_request_duration_seconds_bucket{endpoint="chat_completions",le="%s"}'
    assert [
        b for b in [*BUCKETS, "60.0", "120.0", "+Inf"] if sample(text, latency % b) is None
    ] == []
    assert "_created" not in text  # prometheus-client's creation timestamps are left out
    assert "# TYPE abstractcore_requests_total counter" in text
    assert "# TYPE abstractcore_time_to_first_token_seconds histogram" in text
    assert sample(text, "abstractcore_requests_in_flight") == 0.0
    assert sample(text, "abstractcore_queue_depth") == 2.0
    assert sample(text, "abstractcore_active_requests") == 1.0
    assert sample(text, "abstractcore_batch_size") == 1.0
    assert sample(text, "abstractcore_engine_steps_total") == 10.0
    assert sample(text, "abstractcore_engine_prompt_cache_hits_total") == 4.0
    assert sample(text, "abstractcore_engine_prefill_tok_s") == 1.5
    assert "draining" not in text and "engine_name" not in text  # not numbers
    assert "# TYPE abstractcore_engine_steps_total counter" in text


def test_metrics_content_negotiation(two_servers: tuple[ThreadServer, ThreadServer]) -> None:
    server = two_servers[0]
    r = server.client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n") and "abstractcore_queue_depth 2.0" in r.text
    assert json.dumps(r.text).count("_created") == 0
