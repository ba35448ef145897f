"""Tool calls over real HTTP: round trips on every provider and verb, parallel calls, argument
streams cut at awkward places, and arguments that do not validate."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from servers import PROVIDERS, VERBS, answer
from tools_fixtures import PREFACE, get_time, get_weather, offered, replayed

from abstractcore import Message
from abstractcore.errors import ToolCallError

_FAKE_IDS = {"openai": "call_0_{}", "anthropic": "toolu_0_{}"}


def _check_id(kind: str, call_id: str, i: int) -> None:
    if kind == "ollama":  # Ollama sends no ids: the provider makes unique ones
        assert re.fullmatch(r"call_[0-9a-f]{32}", call_id)
    else:
        assert call_id == _FAKE_IDS[kind].format(i)


@pytest.mark.anyio
@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_tool_round_trip(kind: str, verb: str, make_llm: Any, fake: Any) -> None:
    tools = [get_weather, get_time]
    async with make_llm(kind) as llm:
        first = await answer(llm, verb, "weather in Paris", tools=tools)
        assert first.finish_reason == "tool_calls"
        assert first.content == PREFACE.get(kind, "")
        (call,) = first.tool_calls
        assert (call.name, call.arguments) == ("get_weather", {"city": "Paris"})
        assert call.raw_arguments == '{"city": "Paris"}'
        _check_id(kind, call.id, 0)
        if first.chunks:  # really streamed: the arguments came in pieces (Ollama's whole)
            deltas = [d for c in first.chunks for d in c.tool_call_deltas]
            assert len(deltas) == 1 if kind == "ollama" else len(deltas) > 2
        result = get_weather(**call.arguments)
        messages = [
            Message(role="user", content="weather in Paris"),
            Message(role="assistant", content=first.content, tool_calls=first.tool_calls),
            Message(role="tool", tool_call_id=call.id, content=result),
        ]
        final = await answer(llm, verb, messages=messages, tools=tools)
    assert (final.content, final.finish_reason, final.tool_calls) == (
        "Result: sunny in Paris",
        "stop",
        [],
    )
    sent_first, sent_final = (r.json for r in fake.requests(llm.model))
    assert sent_first["tools"] == [offered(kind, t) for t in tools]
    assert sent_final["messages"][0] == {"role": "user", "content": "weather in Paris"}
    assert sent_final["messages"][1:] == replayed(kind, first.content, [call], [result])


@pytest.mark.anyio
@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_parallel_tool_calls(kind: str, verb: str, make_llm: Any, fake: Any) -> None:
    prompt = "weather in Paris and Rome"
    async with make_llm(kind) as llm:
        first = await answer(llm, verb, prompt, tools=[get_weather])
        calls = first.tool_calls
        assert [(c.name, c.arguments) for c in calls] == [
            ("get_weather", {"city": "Paris"}),
            ("get_weather", {"city": "Rome"}),
        ]
        for i, c in enumerate(calls):
            _check_id(kind, c.id, i)
        assert calls[0].id != calls[1].id
        results = [get_weather(**c.arguments) for c in calls]
        messages = [
            Message(role="user", content=prompt),
            first_turn := Message(role="assistant", content=first.content, tool_calls=calls),
            *(Message(role="tool", tool_call_id=c.id, content=r) for c, r in zip(calls, results)),
        ]
        final = await answer(llm, verb, messages=messages, tools=[get_weather])
    assert final.content == "Result: sunny in Paris | sunny in Rome"
    sent = fake.requests(llm.model)[1].json["messages"]
    assert sent[1:] == replayed(kind, first_turn.content, calls, results)
    # Anthropic: both results in ONE user turn; the others: one tool message per result.
    assert len(sent) == (3 if kind == "anthropic" else 4)


# ---------------------------------------------------------------------- awkward splits
ARGS = [{"city": '"Méribel"'}, {"city": "Zoë\\"}]
PROMPT = 'weather in "Méribel" and Zoë\\'
TEXTS = [json.dumps(a) for a in ARGS]  # {"city": "\"M\u00e9ribel\""} and {"city": "Zo\u00eb\\"}
WHOLE = "".join(TEXTS)
SPLITS = [
    WHOLE.index('\\"') + 1,  # between the backslash and the quote of \"
    WHOLE.index("\\u00e9") + 3,  # inside the escape \u00e9
    WHOLE.index("ribel") + 2,  # inside a string
    len(TEXTS[0]) - 1,  # this piece runs from the end of call 0 into call 1...
    len(TEXTS[0]) + 4,  # ...to here
    WHOLE.index("\\u00eb") + 1,  # right after a backslash
    WHOLE.index("\\\\") + 1,  # between the two backslashes of an escaped backslash
]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_streamed_arguments_split_at_awkward_places(
    kind: str, make_llm: Any, fake: Any
) -> None:
    async with make_llm(kind) as llm:
        fake.configure(llm.model, splits=SPLITS)
        whole = await answer(llm, "generate", PROMPT, tools=[get_weather])
        streams = [await answer(llm, v, PROMPT, tools=[get_weather]) for v in ("stream", "astream")]
    assert [c.arguments for c in whole.tool_calls] == ARGS
    assert [c.raw_arguments for c in whole.tool_calls] == TEXTS

    def shape(calls: list[Any]) -> list[Any]:
        # Ollama's ids are made up per response; the fakes' ids are stable.
        return [(c.name, c.arguments, c.raw_arguments, kind == "ollama" or c.id) for c in calls]

    for streamed in streams:
        assert shape(streamed.tool_calls) == shape(whole.tool_calls)
        # Deltas are numbered by call (Anthropic: the n-th tool_use block, after a text block).
        assert sorted({d.index for c in streamed.chunks for d in c.tool_call_deltas}) == [0, 1]
        if kind == "ollama":
            continue  # whole calls per line: see the next test
        fragments = [d.arguments for c in streamed.chunks for d in c.tool_call_deltas]
        assert "".join(fragments) == WHOLE
        offsets = set(itertools.accumulate(len(f) for f in fragments))
        assert set(SPLITS) <= offsets  # the text really was cut where the test chose
    if kind == "openai":  # one chunk carried the end of call 0 and the start of call 1
        indices = [{d.index for d in c.tool_call_deltas} for c in streams[0].chunks]
        assert {0, 1} in indices


@pytest.mark.parametrize("per_line", [1, 2])
def test_ollama_streams_whole_calls(per_line: int, make_llm: Any, fake: Any) -> None:
    llm = make_llm("ollama")
    fake.configure(llm.model, calls_per_line=per_line)
    chunks = list(llm.stream(PROMPT, tools=[get_weather]))
    carrying = [c.tool_call_deltas for c in chunks if c.tool_call_deltas]
    assert len(carrying) == 2 // per_line
    deltas = [d for ds in carrying for d in ds]
    assert [(d.index, d.name, d.arguments) for d in deltas] == [
        (0, "get_weather", TEXTS[0]),
        (1, "get_weather", TEXTS[1]),
    ]
    assert chunks[-1].finish_reason == "tool_calls"
    assert [c.arguments for c in chunks[-1].tool_calls] == ARGS
    assert [c.id for c in chunks[-1].tool_calls] == [d.id for d in deltas]


# ---------------------------------------------------------------------- bad arguments
@pytest.mark.anyio
@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_arguments_that_do_not_validate(kind: str, verb: str, make_llm: Any) -> None:
    async with make_llm(kind, "bad-always") as llm:
        with pytest.raises(ToolCallError) as info:
            await answer(llm, verb, "weather in Paris", tools=[get_weather])
    assert info.value.tool_name == "get_weather"
    assert info.value.raw == '{"city": 0}'  # what the model wrote, for the log
    assert "city" in info.value.errors
    assert info.value.response is not None
    assert info.value.response.tool_calls[0].raw_arguments == '{"city": 0}'
