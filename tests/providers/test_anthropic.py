"""Anthropic Messages API: wire details, SSE events, errors and configuration."""

from __future__ import annotations

from typing import Any

import pytest

from abstractcore.errors import (
    ConfigurationError,
    ContextLengthError,
    OverloadedError,
    RateLimitError,
)
from abstractcore.factory import get_provider_class
from abstractcore.providers._http import WireEvent
from abstractcore.providers.anthropic import (
    ANTHROPIC_VERSION,
    DEFAULT_MAX_TOKENS,
    AnthropicProvider,
    AnthropicWire,
)
from abstractcore.request import GenerationRequest
from abstractcore.types import Message

REQUEST = GenerationRequest(messages=[Message(role="user", content="x")])


def test_registered_name() -> None:
    assert get_provider_class("anthropic") is AnthropicProvider


def test_request_body_and_headers(make_llm: Any, fake: Any) -> None:
    llm = make_llm("anthropic", api_key="sk-ant-secret")
    llm.generate(
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there world"},
        ],
        temperature=0.5,
        top_p=0.8,
        top_k=40,
        seed=3,  # not part of the Messages API: not sent
        stop=["END"],
        prompt_cache_key="conv",  # not part of the Messages API: not sent
    )
    (req,) = fake.requests(llm.model)
    assert req.path == "/anthropic/v1/messages"
    assert req.headers["x-api-key"] == "sk-ant-secret"
    assert req.headers["anthropic-version"] == ANTHROPIC_VERSION
    assert "authorization" not in req.headers
    assert req.json == {
        "model": llm.model,
        "system": "be brief",
        "messages": [{"role": "user", "content": "hello there world"}],
        "max_tokens": DEFAULT_MAX_TOKENS,
        "stream": False,
        "temperature": 0.5,
        "top_p": 0.8,
        "top_k": 40,
        "stop_sequences": ["END"],
    }


def test_max_output_tokens_is_sent_as_max_tokens(make_llm: Any, fake: Any) -> None:
    llm = make_llm("anthropic")
    chunks = list(llm.stream("hello there world", max_output_tokens=2))
    assert chunks[-1].finish_reason == "length"  # stop_reason max_tokens
    assert fake.requests(llm.model)[0].json["max_tokens"] == 2


def test_usage_includes_cached_prompt_tokens(make_llm: Any) -> None:
    llm = make_llm("anthropic", "cached")
    usage = llm.generate("hello there world").usage
    # input_tokens excludes cache reads; prompt_tokens is the whole prompt, as for OpenAI.
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (3, 4, 3)
    assert list(llm.stream("hello there world"))[-1].usage == usage


def test_context_overflow(make_llm: Any) -> None:
    with pytest.raises(ContextLengthError) as info:
        make_llm("anthropic", "context").generate("hello there world")
    assert info.value.status_code == 400


def test_overloaded_is_529(make_llm: Any, fake: Any) -> None:
    llm = make_llm("anthropic", "overloaded")
    with pytest.raises(OverloadedError) as info:
        llm.generate("hello there world")
    assert info.value.status_code == 529
    assert fake.attempts(llm.model) == 3


def test_error_event_types_map_to_the_tree() -> None:
    parser = AnthropicWire("m", "anthropic", "k").stream_parser(REQUEST)
    body = '{"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}}'
    with pytest.raises(RateLimitError) as info:
        parser.feed(WireEvent("error", body))
    assert info.value.status_code == 429


def test_unknown_events_are_ignored() -> None:
    parser = AnthropicWire("m", "anthropic", "k").stream_parser(REQUEST)
    assert parser.feed(WireEvent("ping", '{"type": "ping"}')) == []
    assert parser.feed(WireEvent("future_event", '{"type": "future_event"}')) == []
    assert not parser.done


def test_tool_results_become_one_user_turn_of_blocks(make_llm: Any, fake: Any) -> None:
    llm = make_llm("anthropic")
    call = {"id": "toolu_1", "name": "weather", "arguments": {"city": "Paris"}}
    other = {"id": "toolu_2", "name": "weather", "arguments": {"city": "Rome"}}
    llm.generate(
        messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": "calling", "tool_calls": [call, other]},
            {"role": "tool", "content": "sunny", "tool_call_id": "toolu_1"},
            {"role": "tool", "content": "rainy", "tool_call_id": "toolu_2"},
            {"role": "user", "content": "thanks"},
        ]
    )
    sent = fake.requests(llm.model)[0].json["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "calling"},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}},
        ],
    }
    # Both results in the one user turn right after the call: the API requires it.
    assert sent[2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "rainy"},
        ],
    }
    assert sent[3] == {"role": "user", "content": "thanks"} and len(sent) == 4


def test_missing_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ConfigurationError) as info:
        AnthropicProvider("claude-x")
    assert info.value.setting == "api_key" and "ANTHROPIC_API_KEY" in str(info.value)


def test_environment_key_and_default_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env")
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    llm = AnthropicProvider("claude-x")
    assert llm.base_url == "https://api.anthropic.com"
    assert llm._wire.headers()["x-api-key"] == "sk-ant-env"
