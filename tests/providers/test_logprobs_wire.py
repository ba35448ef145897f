"""Logprobs over real HTTP on OpenAI (``choices[0].logprobs.content``) and Ollama (top-level
``logprobs``), whole and streamed; Anthropic refuses them (see test_tool_choice_wire)."""

from __future__ import annotations

from typing import Any

import pytest
from servers import VERBS, answer

from abstractcore import TokenLogprob, TopLogprob

KINDS = ["openai", "lmstudio", "ollama"]
TOKENS = ["Echo:", " hello", " there", " world"]


def _expected(k: int) -> list[TokenLogprob]:
    # The fake model: token i has logprob -0.5 * (i + 1); its alternatives are itself, then
    # "alt1", "alt2"... each 1 lower.
    out = []
    for i, token in enumerate(TOKENS):
        lp = -0.5 * (i + 1)
        top = [(token, lp), *((f"alt{j}", lp - j) for j in range(1, k))][:k]
        out.append(
            TokenLogprob(
                token=token,
                logprob=lp,
                bytes=list(token.encode()),
                top_logprobs=[
                    TopLogprob(token=t, logprob=p, bytes=list(t.encode())) for t, p in top
                ],
            )
        )
    return out


@pytest.mark.anyio
@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("kind", KINDS)
async def test_logprobs(kind: str, verb: str, make_llm: Any, fake: Any) -> None:
    async with make_llm(kind) as llm:
        got = await answer(llm, verb, "hello there world", logprobs=True, top_logprobs=3)
    assert got.content == "Echo: hello there world"
    assert got.logprobs == _expected(3)
    assert got.logprobs[1].top_logprobs[2] == TopLogprob(
        token="alt2", logprob=-3.0, bytes=[97, 108, 116, 50]
    )
    for chunk in got.chunks:  # each streamed chunk carries the logprobs of its own text
        if chunk.content:
            assert chunk.logprobs is not None
            assert [lp.token for lp in chunk.logprobs] == [chunk.content]
    body = fake.requests(llm.model)[0].json
    assert (body["logprobs"], body["top_logprobs"]) == (True, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_logprobs_without_alternatives(kind: str, make_llm: Any, fake: Any) -> None:
    llm = make_llm(kind)
    response = llm.generate("hello there world", logprobs=True)
    assert response.logprobs == _expected(0)
    assert all(lp.top_logprobs == [] for lp in response.logprobs)
    body = fake.requests(llm.model)[0].json
    assert (body["logprobs"], body["top_logprobs"]) == (True, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_no_logprobs_unless_asked(kind: str, make_llm: Any, fake: Any) -> None:
    llm = make_llm(kind)
    assert llm.generate("hello there world").logprobs is None
    assert all(c.logprobs is None for c in llm.stream("hello there world"))
    assert all("logprobs" not in r.json for r in fake.requests(llm.model))
