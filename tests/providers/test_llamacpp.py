"""The llamacpp preset: llama.cpp's own request fields on the wire (fake server), and a real
``llama-server`` on the embedded model's GGUF when one is installed (``make llama-server``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from abstractcore import create_llm
from abstractcore.errors import ConfigurationError, StructuredOutputError
from abstractcore.factory import get_provider_class
from abstractcore.providers.llamacpp import LLAMACPP_BASE_URL, LlamaCppProvider


class City(BaseModel):
    name: str
    population: int


def test_registered_with_llama_servers_default_url(monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_provider_class("llamacpp") is LlamaCppProvider
    monkeypatch.delenv("LLAMACPP_BASE_URL", raising=False)
    assert LlamaCppProvider("m").base_url == LLAMACPP_BASE_URL == "http://127.0.0.1:8080/v1"
    monkeypatch.setenv("LLAMACPP_BASE_URL", "http://127.0.0.1:9999/v1")
    assert create_llm("llamacpp", model="m").base_url == "http://127.0.0.1:9999/v1"


def test_schemas_and_prompt_caching_use_llama_cpps_fields(fake: Any) -> None:
    base = fake.base_url("openai")
    with LlamaCppProvider("ok~llamacpp-wire", base_url=base, max_retries=0) as llm:
        with pytest.raises(StructuredOutputError):  # the fake echoes text, not JSON
            llm.generate("describe Paris", response_model=City, prompt_cache_key="conv-1")
    first = fake.requests("ok~llamacpp-wire")[0]
    body = first.json
    assert "response_format" not in body and "prompt_cache_key" not in body
    assert body["json_schema"]["properties"].keys() == {"name", "population"}
    assert body["json_schema"]["additionalProperties"] is False  # a response_model is closed
    assert body["cache_prompt"] is True
    assert first.headers["x-prompt-cache-key"] == "conv-1"  # what a proxy routes on


def test_json_object_and_an_own_grammar_pass_through(fake: Any) -> None:
    base = fake.base_url("openai")
    with LlamaCppProvider("ok~llamacpp-raw", base_url=base, max_retries=0) as llm:
        llm.generate("plain text", extra_body={"grammar": 'root ::= "yes" | "no"'})
        llm.generate("an object", response_format={"type": "json_object"})
    plain, obj = (r.json for r in fake.requests("ok~llamacpp-raw")[:2])
    assert plain["grammar"] == 'root ::= "yes" | "no"' and "json_schema" not in plain
    assert obj["response_format"] == {"type": "json_object"}


# ---------------------------------------------------------------------- a real llama-server
def _llama_server() -> str | None:
    from abstractcore.bench.llama_server import find_llama_server

    try:
        return find_llama_server()
    except ConfigurationError:
        return None


needs_llama_server = pytest.mark.skipif(
    _llama_server() is None,
    reason="no llama-server on PATH, in $LLAMA_SERVER or from `make llama-server`",
)


@pytest.fixture(scope="module")
def llama_server(embedded_gguf: Path) -> Iterator[str]:
    """llama-server on the embedded Q4_1 GGUF with 4 slots; its /v1 URL."""
    from abstractcore.bench.llama_server import LlamaServer

    server = LlamaServer(str(embedded_gguf), 4, 120.0, float32=False, label="llama-server")
    loop = asyncio.new_event_loop()
    try:
        yield loop.run_until_complete(server.start())
    finally:
        loop.run_until_complete(server.stop())
        loop.close()


@pytest.mark.slow
@needs_llama_server
def test_a_real_llama_server_generates_streams_and_follows_a_schema(llama_server: str) -> None:
    with create_llm("llamacpp", model="smollm2", base_url=llama_server, temperature=0.0) as llm:
        whole = llm.generate("What is the capital of France?", max_output_tokens=12)
        assert whole.content and whole.usage.reported and whole.usage.completion_tokens > 0
        chunks = list(llm.stream("What is the capital of France?", max_output_tokens=12))
        assert "".join(c.content for c in chunks) == whole.content  # greedy: the same text
        assert chunks[-1].usage is not None and chunks[-1].usage.reported
        city = llm.generate("Describe Paris as JSON.", response_model=City, max_output_tokens=60)
        assert isinstance(city.parsed, City)  # llama.cpp's json_schema grammar held the model


@pytest.mark.anyio
@pytest.mark.slow
@needs_llama_server
async def test_the_benchmark_starts_and_stops_llama_server(embedded_gguf: Path) -> None:
    from abstractcore.bench.scenarios import Query
    from abstractcore.bench.sweep_config import GenParams
    from abstractcore.bench.systems import LlamaServerSystem

    system = LlamaServerSystem("llama-server-quant", str(embedded_gguf), 2, 120.0)
    system.check()
    await system.start()
    try:
        query = Query(id="q", messages=[{"role": "user", "content": "Say hello."}])
        result = await system.run_query(0, query, GenParams(max_output_tokens=8), 1)
        assert result.error is None and result.output_tokens > 0 and result.ttft_s is not None
        sample = system.memory_sample()  # the server process's resident set
        assert sample is not None and sample["memory"] > 50e6
        pid = system.server_pid()
    finally:
        await system.close()
    assert pid is not None and not Path(f"/proc/{pid}").exists()
