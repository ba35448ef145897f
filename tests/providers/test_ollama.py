"""Ollama /api/chat: options mapping, NDJSON streaming, OLLAMA_HOST and server timings."""

from __future__ import annotations

from typing import Any

import pytest

from abstractcore.errors import ModelNotFoundError
from abstractcore.factory import get_provider_class
from abstractcore.providers.ollama import OllamaProvider


def test_registered_name() -> None:
    assert get_provider_class("ollama") is OllamaProvider


def test_sampling_goes_in_options(make_llm: Any, fake: Any) -> None:
    llm = make_llm("ollama")
    llm.generate(
        "hello there world",
        system_prompt="be brief",
        temperature=0.1,
        top_p=0.7,
        top_k=20,
        seed=11,
        stop=["\n"],
        max_output_tokens=64,
        prompt_cache_key="ignored",
        extra_body={"keep_alive": "5m"},  # provider-specific fields are merged into the body
    )
    (req,) = fake.requests(llm.model)
    assert req.path == "/ollama/api/chat"
    assert "authorization" not in req.headers
    assert req.json == {
        "model": llm.model,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there world"},
        ],
        "stream": False,  # explicit: the API streams by default
        "options": {
            "temperature": 0.1,
            "top_p": 0.7,
            "top_k": 20,
            "seed": 11,
            "stop": ["\n"],
            "num_predict": 64,
        },
        "keep_alive": "5m",
    }


def test_stream_is_ndjson_and_reports_server_timing(make_llm: Any, fake: Any) -> None:
    llm = make_llm("ollama")
    chunks = list(llm.stream("hello there world"))
    assert fake.requests(llm.model)[0].json["stream"] is True
    assert [c.content for c in chunks[:-1]] == ["Echo:", " hello", " there", " world"]
    last = chunks[-1]
    assert last.usage is not None and (last.usage.prompt_tokens, last.usage.completion_tokens) == (
        3,
        4,
    )
    assert last.timing is not None and last.timing.decode_tokens_per_s == pytest.approx(4000.0)
    response = llm.generate("hello there world")
    assert response.timing.decode_tokens_per_s == pytest.approx(
        4000.0
    )  # eval_count / eval_duration


def test_unknown_model_is_model_not_found(make_llm: Any) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        make_llm("ollama", "404").generate("hello there world")
    assert info.value.body == {"error": "not_found (404)"}


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1:11500", "http://127.0.0.1:11500"),
        ("localhost", "http://localhost:11434"),
        ("http://10.0.0.5:8000", "http://10.0.0.5:8000"),
        ("https://ollama.example.com", "https://ollama.example.com"),
    ],
)
def test_ollama_host(monkeypatch: pytest.MonkeyPatch, host: str, expected: str) -> None:
    monkeypatch.setenv("OLLAMA_HOST", host)
    assert OllamaProvider("llama3").base_url == expected


def test_default_url_and_explicit_base_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    assert OllamaProvider("llama3").base_url == "http://localhost:11434"
    monkeypatch.setenv("OLLAMA_HOST", "elsewhere:1")
    assert OllamaProvider("llama3", base_url="http://127.0.0.1:9").base_url == "http://127.0.0.1:9"


def test_api_key_is_optional_and_sent_as_bearer(make_llm: Any, fake: Any) -> None:
    llm = make_llm("ollama", api_key="proxy-key")
    llm.generate("hello there world")
    assert fake.requests(llm.model)[0].headers["authorization"] == "Bearer proxy-key"
