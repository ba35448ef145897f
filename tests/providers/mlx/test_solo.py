"""A lone request decodes solo and hands over to the batch exactly (real embedded model)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.mlx

N = 12
# Long enough for several prefill chunks of 8 tokens once the chat template is applied.
LONG = "Explain, step by step and in plain words, how bread dough rises in a warm kitchen."
MATE = "Name three colours."


def _delta(before: dict[str, Any], after: dict[str, Any], key: str) -> int:
    return int(after[key] - before[key])


# ---------------------------------------------------------------------- SoloDecode + handover
def _greedy_tokens(model: Any, prompt: list[int], n: int) -> list[int]:
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    return [int(t) for t, _ in generate_step(mx.array(prompt), model, max_tokens=n)]


def _prefilled_cache(model: Any, tokens: list[int]) -> list[Any]:
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    model(mx.array(tokens)[None], cache=cache)
    mx.eval([c.state for c in cache])
    return cache


def _run_until(solo: Any, at: str, out: list[int], prompt_len: int) -> None:
    """Step ``solo`` to the phase named ``at`` (tokens it returns go to ``out``)."""
    done = {
        "start": lambda: True,
        "mid-prefill": lambda: solo.prompt_done > 0 or steps >= 2,
        "last-prompt-token": lambda: solo.prompt_done >= prompt_len - 1,  # only it is left
        "first-token": lambda: len(out) == 1,
        "mid-decode": lambda: len(out) == 5,
        "never": lambda: len(out) == N,
    }[at]
    steps = 0
    while not done():
        token = solo.step()
        steps += 1
        if token is not None:
            out.append(token)


@pytest.mark.parametrize("cached", [0, 20])
@pytest.mark.parametrize(
    "at", ["start", "mid-prefill", "last-prompt-token", "first-token", "mid-decode", "never"]
)
def test_solo_decode_and_its_handover_give_the_greedy_tokens(
    mlx_llm: Any, reference: Any, at: str, cached: int
) -> None:
    from mlx_lm.generate import BatchGenerator, generation_stream
    from mlx_lm.sample_utils import greedy_sampler

    from abstractcore.providers.mlx.solo import SoloDecode

    model = reference.model
    prompt = mlx_llm.tokenize(LONG)
    assert len(prompt) > cached + 3 * 8
    expected = _greedy_tokens(model, prompt, N)
    solo = SoloDecode(
        model, prompt, stream=generation_stream, sampler=greedy_sampler, max_tokens=N,
        prefill_step_size=8, cache=_prefilled_cache(model, prompt[:cached]) if cached else None,
        cached=cached,
    )  # fmt: skip
    out: list[int] = []
    _run_until(solo, at, out, len(prompt))
    assert solo.cache[0].offset == len(solo.tokens)  # the cache covers exactly its tokens
    if at == "never":
        assert out == expected
        return
    if solo.pending:
        out.append(solo.step(queue_next=False))
    h = solo.handover()
    assert h.tokens == (prompt + out)[: len(h.tokens)]
    assert h.tokens + h.prompt == (prompt + out)[: len(h.tokens) + len(h.prompt)]
    assert h.max_tokens == N - len(out)

    gen = BatchGenerator(model, stop_tokens=[], prefill_step_size=8, stream=generation_stream)
    gen.insert([mlx_llm.tokenize(MATE)], max_tokens=[N])  # the arrival that forced the handover
    (uid,) = gen.insert(
        [h.prompt], max_tokens=[h.max_tokens], samplers=[greedy_sampler],
        caches=None if h.cache is None else [h.cache],
        all_tokens=None if h.cache is None else [h.tokens],
    )  # fmt: skip
    final = None
    while final is None:
        for r in gen.next()[1]:
            if r.uid == uid:
                out.append(r.token)
                final = r if r.finish_reason else None
    assert out == expected
    assert final.finish_reason == "length"
    assert final.prompt_cache[0].offset == len(final.all_tokens)


@pytest.mark.parametrize("logprobs", [True, False])
def test_greedy_solo_decode_without_logprobs_takes_the_argmax(
    mlx_llm: Any, reference: Any, logprobs: bool
) -> None:
    """A greedy request that wants no logprobs skips normalizing the logits: same tokens."""
    from mlx_lm.generate import generation_stream
    from mlx_lm.sample_utils import greedy_sampler

    from abstractcore.providers.mlx.solo import SoloDecode

    model = reference.model
    prompt = mlx_llm.tokenize(LONG)
    solo = SoloDecode(
        model, prompt, stream=generation_stream, sampler=greedy_sampler, max_tokens=N,
        prefill_step_size=512, logprobs=logprobs,
    )  # fmt: skip
    out: list[int] = []
    _run_until(solo, "never", out, len(prompt))
    assert out == _greedy_tokens(model, prompt, N)
    if logprobs:
        assert solo.last_logprobs.shape == (model.args.vocab_size,)
    else:
        assert solo.last_logprobs is None


def test_handover_needs_the_pending_token_read_first(mlx_llm: Any, reference: Any) -> None:
    from mlx_lm.generate import generation_stream
    from mlx_lm.sample_utils import greedy_sampler

    from abstractcore.providers.mlx.solo import SoloDecode

    prompt = mlx_llm.tokenize(MATE)
    solo = SoloDecode(
        reference.model, prompt, stream=generation_stream, sampler=greedy_sampler,
        max_tokens=4, prefill_step_size=512,
    )  # fmt: skip
    assert solo.step() is None  # the prompt but its last token
    solo.step()
    with pytest.raises(RuntimeError, match="pending"):
        solo.handover()
    with pytest.raises(ValueError, match="cached"):
        SoloDecode(
            reference.model, prompt, stream=generation_stream, sampler=greedy_sampler,
            max_tokens=4, prefill_step_size=512, cached=len(prompt),
        )  # fmt: skip


# ---------------------------------------------------------------------- in the engine
def test_a_lone_request_runs_solo_and_equals_mlx_lm(
    mlx_llm: Any, reference: Any, assert_engine_empty: Any
) -> None:
    before = mlx_llm.stats()
    r = mlx_llm.generate(LONG, max_output_tokens=N)
    after = mlx_llm.stats()
    assert _delta(before, after, "solo_requests") == 1
    assert _delta(before, after, "solo_handovers") == 0
    assert _delta(before, after, "generated_tokens") == r.usage.completion_tokens
    assert _delta(before, after, "prompt_tokens") == r.usage.prompt_tokens
    assert after["prefill_tok_s"] > 0 and after["decode_tok_s"] > 0
    assert r.content == reference.greedy(mlx_llm.tokenize(LONG), N)
    # a lone row runs the plain layers
    assert not mlx_llm.engine.call(lambda e: e.core.setup.padding.on)
    assert_engine_empty(mlx_llm)


@pytest.mark.anyio
async def test_an_arrival_hands_the_solo_request_to_the_batch(
    mlx_llm: Any, reference: Any, assert_engine_empty: Any
) -> None:
    before = mlx_llm.stats()
    parts: list[str] = []
    late: asyncio.Task[Any] | None = None
    async with contextlib.aclosing(mlx_llm.astream(LONG, max_output_tokens=N)) as chunks:
        async for chunk in chunks:
            parts.append(chunk.content)
            if late is None:
                late = asyncio.create_task(mlx_llm.agenerate(MATE, max_output_tokens=N))
    assert late is not None
    mate = await late
    after = mlx_llm.stats()
    assert _delta(before, after, "solo_requests") == 1
    assert _delta(before, after, "solo_handovers") == 1
    assert "".join(parts) == reference.greedy(mlx_llm.tokenize(LONG), N)
    assert mate.content == reference.greedy(mlx_llm.tokenize(MATE), N)
    await asyncio.to_thread(assert_engine_empty, mlx_llm)


def test_a_keyed_turn_runs_solo_from_its_cache(mlx_llm: Any, reference: Any) -> None:
    history = [{"role": "user", "content": MATE}]
    first = mlx_llm.generate(messages=history, max_output_tokens=N, prompt_cache_key="solo")
    history += [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": "And one more?"},
    ]
    before = mlx_llm.stats()
    second = mlx_llm.generate(messages=history, max_output_tokens=N, prompt_cache_key="solo")
    assert _delta(before, mlx_llm.stats(), "solo_requests") == 1
    assert second.usage.cached_tokens > 0
    assert second.content == reference.greedy(mlx_llm.tokenize(messages=history), N)


def test_solo_decode_can_be_switched_off(embedded_model_dir: Path, reference: Any) -> None:
    from abstractcore.providers.mlx.provider import MLXProvider

    with MLXProvider(str(embedded_model_dir), solo_decode=False) as llm:
        r = llm.generate(LONG, max_output_tokens=N)
        assert llm.stats()["solo_requests"] == 0
        assert r.content == reference.greedy(llm.tokenize(LONG), N)
