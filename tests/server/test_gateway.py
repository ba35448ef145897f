"""Gateway mode: the server over an HTTP provider, here `openai-compatible` pointed at a second
(scripted) server on loopback, driven by the official openai and anthropic SDKs."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest

from abstractcore import BaseProvider, create_llm
from abstractcore.server import create_app

from .conftest import API_KEY, ScriptedProvider, ThreadServer, wait_until


@pytest.fixture(scope="module")
def gateway(scripted_server: ThreadServer) -> Iterator[ThreadServer]:
    def upstream() -> BaseProvider:
        return create_llm(
            "openai-compatible", model="scripted-1", base_url=f"{scripted_server.base_url}/v1",
            api_key=API_KEY, max_retries=0,
        )  # fmt: skip

    # A factory, so the app owns the provider and closes its async client on its own loop.
    server = ThreadServer(create_app(upstream, model_aliases=["front"])).start()
    wait_until(lambda: server.client.get("/health").status_code == 200, timeout=10, what="ready")
    yield server
    server.stop()


def test_openai_sdk_through_the_gateway(gateway: ThreadServer, scripted: ScriptedProvider) -> None:
    with openai.OpenAI(
        base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0
    ) as client:
        r = client.chat.completions.create(
            model="front",
            max_tokens=4,
            messages=[{"role": "user", "content": "echo one two three"}],
        )
        assert r.choices[0].message.content == "one two three"
        assert r.usage is not None and r.usage.prompt_tokens_details.cached_tokens == 3  # type: ignore[union-attr]
        stream = client.chat.completions.create(
            model="front", max_tokens=4, stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "echo a b"}],
        )  # fmt: skip
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a b"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2
    assert scripted.requests[-1].max_output_tokens == 4


def test_anthropic_sdk_through_the_gateway(gateway: ThreadServer) -> None:
    with (
        anthropic.Anthropic(base_url=gateway.base_url, api_key="unused", max_retries=0) as client,
        client.messages.stream(
            model="scripted-1", max_tokens=3, messages=[{"role": "user", "content": "echo x y z w"}]
        ) as stream,
    ):
        assert "".join(stream.text_stream) == "x y z"
        assert stream.get_final_message().stop_reason == "max_tokens"


@pytest.mark.parametrize(("error", "status"), [("OverloadedError", 429), ("ProviderAPIError", 502)])
def test_upstream_errors_through_the_gateway(
    gateway: ThreadServer, error: str, status: int
) -> None:
    r = gateway.client.post(
        "/v1/chat/completions",
        json={"model": "front", "messages": [{"role": "user", "content": f"fail {error}"}]},
    )
    assert r.status_code == status, r.text
    if status == 429:
        assert int(r.headers["retry-after"]) >= 1
    assert "secret" not in r.text
