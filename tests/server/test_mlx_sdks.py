"""The official openai and anthropic SDKs against `abstractcore serve` on the embedded model."""

from __future__ import annotations

import asyncio

import anthropic
import openai
import pytest

from .conftest import API_KEY, ServerProcess

pytestmark = [pytest.mark.mlx, pytest.mark.slow]

MODEL = "smollm2-135m"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def oai(mlx_server: ServerProcess) -> openai.OpenAI:
    with openai.OpenAI(
        base_url=f"{mlx_server.base_url}/v1", api_key=API_KEY, max_retries=0
    ) as client:
        yield client


@pytest.fixture(scope="module")
def claude(mlx_server: ServerProcess) -> anthropic.Anthropic:
    with anthropic.Anthropic(
        base_url=mlx_server.base_url, api_key=API_KEY, max_retries=0
    ) as client:
        yield client


# ---------------------------------------------------------------------- openai
def test_openai_chat_sync(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=12, temperature=0)
    assert "Paris" in (r.choices[0].message.content or "")
    assert r.choices[0].finish_reason in ("stop", "length") and r.model == MODEL
    assert (
        r.usage is not None and r.usage.prompt_tokens > 10 and 0 < r.usage.completion_tokens <= 12
    )
    assert (
        r.usage.prompt_tokens_details is not None
        and r.usage.prompt_tokens_details.cached_tokens >= 0
    )


def test_openai_stream_equals_non_stream(oai: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a primary color."},
    ]
    whole = oai.chat.completions.create(
        model="smol", messages=messages, max_completion_tokens=10, seed=1
    )
    stream = oai.chat.completions.create(
        model="smol",
        messages=messages,
        max_completion_tokens=10,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[
        0
    ].finish_reason
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


def test_openai_completions_and_models(oai: openai.OpenAI) -> None:
    r = oai.completions.create(model=MODEL, prompt="Say hello.", max_tokens=6)
    assert r.object == "text_completion" and r.choices[0].text and r.usage.completion_tokens <= 6  # type: ignore[union-attr]
    assert [m.id for m in oai.models.list()] == [MODEL, "smol"]


def test_openai_sdk_errors(mlx_server: ServerProcess, oai: openai.OpenAI) -> None:
    with (
        openai.OpenAI(base_url=f"{mlx_server.base_url}/v1", api_key="wrong", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError),
    ):
        bad.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="gpt-4o", messages=FRANCE, max_tokens=2)
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=2, n=2)
    assert info.value.param == "n"
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=100_000)
    assert info.value.code == "context_length_exceeded"


@pytest.mark.anyio
async def test_openai_async_32_concurrent_streams(mlx_server: ServerProcess) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{mlx_server.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=60
    ) as client:

        async def one(i: int) -> tuple[str, str | None]:
            stream = await client.chat.completions.create(
                model=MODEL,
                max_tokens=8,
                stream=True,
                messages=[{"role": "user", "content": f"Give me a fun fact about the number {i}."}],
            )
            parts: list[str] = []
            reason = None
            async for chunk in stream:
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
                    reason = chunk.choices[0].finish_reason or reason
            return "".join(parts), reason

        before = mlx_server.health()["engine"]
        results = await asyncio.gather(*(one(i) for i in range(32)))
    assert all(text and reason in ("stop", "length") for text, reason in results)
    engine = mlx_server.health()["engine"]
    assert engine["finished"] - before["finished"] == 32
    assert engine["mean_batch_size"] > 1  # the requests were decoded together


@pytest.mark.anyio
async def test_openai_async_non_stream(mlx_server: ServerProcess) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{mlx_server.base_url}/v1", api_key=API_KEY, max_retries=0
    ) as client:
        r = await client.chat.completions.create(
            model=MODEL, messages=FRANCE, max_tokens=12, temperature=0
        )
    assert "Paris" in (r.choices[0].message.content or "")


# ---------------------------------------------------------------------- anthropic
def test_anthropic_sync_and_stream(claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(
        model=MODEL, max_tokens=12, messages=FRANCE, system="You are a geography assistant."
    )
    assert msg.type == "message" and msg.role == "assistant" and msg.model == MODEL
    assert msg.content[0].type == "text" and msg.content[0].text
    assert msg.stop_reason in ("end_turn", "max_tokens") and msg.usage.input_tokens > 10
    with claude.messages.stream(
        model=MODEL, max_tokens=12, messages=FRANCE, system="You are a geography assistant."
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == msg.content[0].text == final.content[0].text  # type: ignore[union-attr]
    assert final.usage.output_tokens == msg.usage.output_tokens
    assert final.usage.input_tokens + (final.usage.cache_read_input_tokens or 0) == (
        msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0)
    )


@pytest.mark.anyio
async def test_anthropic_async_and_errors(mlx_server: ServerProcess) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=mlx_server.base_url, api_key=API_KEY, max_retries=0
    ) as client:
        msg = await client.messages.create(
            model="smol", max_tokens=6, messages=[{"role": "user", "content": "Hi"}]
        )
        assert msg.content[0].text  # type: ignore[union-attr]
        events = []
        stream = await client.messages.create(
            model=MODEL, max_tokens=4, stream=True, messages=[{"role": "user", "content": "Hi"}]
        )
        async for event in stream:
            events.append(event.type)
        assert (
            events[:2] == ["message_start", "content_block_start"] and events[-1] == "message_stop"
        )
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.create(
                model="claude-3", max_tokens=4, messages=[{"role": "user", "content": "Hi"}]
            )
        with pytest.raises(anthropic.BadRequestError):
            await client.messages.create(
                model=MODEL, max_tokens=4, messages=[{"role": "tool", "content": "Hi"}]
            )  # type: ignore[typeddict-item]
    async with anthropic.AsyncAnthropic(
        base_url=mlx_server.base_url, api_key="nope", max_retries=0
    ) as bad:
        with pytest.raises(anthropic.AuthenticationError):
            await bad.messages.create(
                model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Hi"}]
            )


# ---------------------------------------------------------------------- grammars, tools, logprobs
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
        },
    },
}
PARIS_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_openai_parse_with_a_pydantic_model(oai: openai.OpenAI) -> None:
    from typing import Literal

    from pydantic import BaseModel, Field

    class Pet(BaseModel):
        kind: Literal["cat", "dog", "fish"]
        name: str = Field(max_length=12)

    r = oai.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a pet."}],
        response_format=Pet,
        max_tokens=40,
    )
    assert isinstance(r.choices[0].message.parsed, Pet)
    assert r.choices[0].finish_reason == "stop"


def test_openai_forced_tool_call_streamed_and_not(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(
        model=MODEL, messages=PARIS_WEATHER, tools=[WEATHER], tool_choice="required",
        max_tokens=60,
    )  # fmt: skip
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and "city" in call.function.arguments
    with oai.chat.completions.stream(
        model=MODEL,
        messages=PARIS_WEATHER,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=60,
    ) as stream:
        final = stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls or []
    assert [c.function.arguments for c in streamed] == [call.function.arguments]
    followed = oai.chat.completions.create(
        model=MODEL,
        messages=[
            *PARIS_WEATHER,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
        ],
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=12,
    )
    assert followed.choices[0].message.content and not followed.choices[0].message.tool_calls


def test_openai_logprobs(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(
        model=MODEL, messages=FRANCE, max_tokens=6, logprobs=True, top_logprobs=2
    )
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and len(content) == r.usage.completion_tokens  # type: ignore[union-attr]
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    assert "".join(t.token for t in content) == r.choices[0].message.content


def test_anthropic_tool_use(claude: anthropic.Anthropic) -> None:
    tool = {
        "name": "get_weather",
        "description": "The weather in a city.",
        "input_schema": WEATHER["function"]["parameters"],  # type: ignore[index]
    }
    msg = claude.messages.create(
        model=MODEL, max_tokens=60, messages=PARIS_WEATHER, tools=[tool],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
    )  # fmt: skip
    assert msg.stop_reason == "tool_use"
    (use,) = [b for b in msg.content if b.type == "tool_use"]
    assert use.name == "get_weather" and "city" in use.input  # type: ignore[operator]
    with claude.messages.stream(
        model=MODEL,
        max_tokens=60,
        messages=PARIS_WEATHER,
        tools=[tool],  # type: ignore[list-item]
        tool_choice={"type": "any"},
    ) as stream:
        final = stream.get_final_message()
    (streamed,) = [b for b in final.content if b.type == "tool_use"]
    assert streamed.input == use.input  # type: ignore[union-attr]
