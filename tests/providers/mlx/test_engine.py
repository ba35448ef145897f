"""Engine lifecycle and failure isolation: admission limits, step failures, thread death, close."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from abstractcore.errors import (
    GenerationCancelledError,
    OverloadedError,
    ProviderAPIError,
    ProviderUnavailableError,
)
from abstractcore.providers.mlx.stop_strings import StopMatcher

LONG = "Write a very long story about a lighthouse keeper."


# ---------------------------------------------------------------------- stop matching (no model)
@pytest.mark.parametrize(
    ("pieces", "stops", "emitted", "matched"),
    [
        (["Hello", " wor", "ld!"], ["world"], "Hello ", True),
        (["ab", "c", "d"], ["cd"], "ab", True),
        (["The end", "ing"], ["end."], "The ending", False),
        (["a<", "|st", "op|>b"], ["<|stop|>"], "a", True),
        (["x", "yz", "yzz"], ["zz", "yzy"], "x", True),
        (["x", "yz", "z"], ["zz", "yzy"], "xy", True),
        (["no stop here"], ["zz"], "no stop here", False),
    ],
)
def test_stop_matcher_holds_back_possible_starts(
    pieces: list[str], stops: list[str], emitted: str, matched: bool
) -> None:
    m = StopMatcher(stops)
    out = []
    hit = False
    for piece in pieces:
        text, hit = m.feed(piece)
        out.append(text)
        assert not any(s in "".join(out) for s in stops)
        if hit:
            break
    if not hit:
        out.append(m.flush())
    assert ("".join(out), hit) == (emitted, matched)


def test_sampler_cache_shares_unseeded_and_isolates_seeded() -> None:
    from abstractcore.providers.mlx.blas import preload_blas

    preload_blas()
    from mlx_lm.sample_utils import greedy_sampler

    from abstractcore.providers.mlx.sampling import SamplerCache, SamplingParams

    cache = SamplerCache(vocab_size=100)
    warm = SamplingParams(temperature=0.7, top_p=0.9)
    assert cache.get(warm) is cache.get(SamplingParams(temperature=0.7, top_p=0.9))
    assert cache.get(warm) is not cache.get(SamplingParams(temperature=0.8, top_p=0.9))
    assert cache.get(warm, seed=1) is not cache.get(warm, seed=1)
    assert cache.get(SamplingParams(), seed=5) is greedy_sampler


# ---------------------------------------------------------------------- admission limits
@pytest.mark.mlx
@pytest.mark.anyio
async def test_queue_full_and_queue_timeout_raise_overloaded(
    embedded_model_dir: Path, assert_engine_empty: Any
) -> None:
    from abstractcore.providers.mlx.provider import MLXProvider

    llm = MLXProvider(str(embedded_model_dir), max_batch_size=1, max_queue=1, queue_timeout_s=0.5)
    try:
        async with contextlib.aclosing(llm.astream(LONG, max_output_tokens=4000)) as busy:
            await busy.__anext__()  # the only batch slot is taken
            waiting = asyncio.create_task(llm.agenerate("Hi", max_output_tokens=4))
            await asyncio.sleep(0)  # submits before the next one
            with pytest.raises(OverloadedError, match="queue is full"):
                await llm.agenerate("Hello", max_output_tokens=4)
            with pytest.raises(OverloadedError, match="queue_timeout_s"):
                await waiting
        await asyncio.to_thread(assert_engine_empty, llm)
        assert llm.stats()["rejected"] == 2
        assert (await llm.agenerate("Hi", max_output_tokens=2)).finish_reason in ("stop", "length")
    finally:
        await llm.aclose()


# ---------------------------------------------------------------------- failure isolation
@pytest.mark.mlx
@pytest.mark.parametrize("path", ["batch", "solo"])
def test_a_failing_step_fails_its_requests_and_the_engine_keeps_serving(
    mlx_llm: Any, assert_engine_empty: Any, path: str
) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected step failure")

    def break_next_step(engine: Any) -> None:
        core = engine.core
        if path == "batch":
            engine.solo_decode = False  # a lone request then goes through the generator
            core.batch.generator.next = boom  # the core rebuilds it after a failed step
            return
        original = core.solo.start

        def start_solo(*args: Any) -> int:
            uid = original(*args)
            core.solo.decode.step = boom
            core.solo.start = original
            return uid

        core.solo.start = start_solo

    mlx_llm.engine.call(break_next_step)
    try:
        with pytest.raises(ProviderAPIError, match="injected step failure"):
            mlx_llm.generate("Hi", max_output_tokens=4)
    finally:
        mlx_llm.engine.call(lambda engine: setattr(engine, "solo_decode", True))
    before = mlx_llm.stats()["solo_requests"]
    assert mlx_llm.generate("What is the capital of France?", max_output_tokens=8).content
    assert mlx_llm.stats()["solo_requests"] == before + 1
    assert_engine_empty(mlx_llm)


@pytest.mark.mlx
@pytest.mark.anyio
async def test_a_lone_request_whose_cache_lookup_fails_gets_its_error(
    mlx_llm: Any, assert_engine_empty: Any
) -> None:
    """Nothing else runs, so no step follows: the error must still reach an async caller."""

    def break_next_lookup(engine: Any) -> None:
        cache = engine.core.cache
        original = cache.checkout

        def checkout(state: Any) -> Any:
            cache.checkout = original
            raise RuntimeError("injected lookup failure")

        cache.checkout = checkout

    await asyncio.to_thread(mlx_llm.engine.call, break_next_lookup)
    with pytest.raises(ProviderAPIError, match="prompt cache lookup failed"):
        await asyncio.wait_for(mlx_llm.agenerate("Hi", max_output_tokens=4), timeout=60)
    assert (await mlx_llm.agenerate("Hi", max_output_tokens=4)).content
    assert_engine_empty(mlx_llm)


@pytest.mark.mlx
def test_snapshot_counts_the_requests_by_status(mlx_llm: Any) -> None:
    stream = mlx_llm.stream(LONG, max_output_tokens=300)
    next(stream)
    assert mlx_llm.engine.snapshot()["statuses"] == {"solo": 1}  # alone: the solo lane
    stream.close()
    assert mlx_llm.engine.snapshot()["statuses"] == {}


@pytest.mark.mlx
def test_a_failing_request_fails_alone(mlx_llm: Any, prompts: list[str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def break_one_detokenizer(engine: Any) -> None:
        output = engine.core.output
        original = output.start

        def start(state: Any, detokenizer: Any) -> None:
            original(state, detokenizer)
            if state.job.max_tokens == 7:
                state.detokenizer = None  # add_token will raise for this request only
                output.start = original

        output.start = start

    mlx_llm.engine.call(break_one_detokenizer)
    with ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(mlx_llm.generate, prompts[i], max_output_tokens=6 + (i == 1))
            for i in range(4)
        ]
        with pytest.raises(ProviderAPIError):
            futures[1].result()
        assert all(futures[i].result().content for i in (0, 2, 3))


@pytest.mark.mlx
def test_engine_thread_death_fails_pending_and_future_requests(
    embedded_model_dir: Path, no_thread_leak: None
) -> None:
    from abstractcore.providers.mlx.provider import MLXProvider

    with MLXProvider(str(embedded_model_dir)) as llm:

        def kill_loop(engine: Any) -> None:
            def step(now: float) -> None:
                raise RuntimeError("injected engine crash")

            engine.core.step = step

        llm.engine.call(kill_loop)
        with pytest.raises(ProviderAPIError, match="engine thread died"):
            llm.generate("Hi", max_output_tokens=4)
        with pytest.raises(ProviderAPIError, match="engine thread died"):
            llm.generate("Hi again", max_output_tokens=4)
        assert not llm.engine.alive


# ---------------------------------------------------------------------- close
@pytest.mark.mlx
@pytest.mark.anyio
async def test_close_with_requests_in_flight(
    embedded_model_dir: Path, no_thread_leak: None
) -> None:
    from abstractcore.providers.mlx.provider import MLXProvider

    llm = MLXProvider(str(embedded_model_dir))
    async with llm:
        started = asyncio.Event()

        async def consume() -> None:
            async for _ in llm.astream(LONG, max_output_tokens=4000):
                started.set()

        streaming = asyncio.create_task(consume())
        queued = [
            asyncio.create_task(llm.agenerate(LONG, max_output_tokens=4000)) for _ in range(3)
        ]
        await started.wait()
        await llm.aclose()
        for task in (streaming, *queued):
            with pytest.raises(GenerationCancelledError):
                await task
    await llm.aclose()  # idempotent
    with pytest.raises(ProviderUnavailableError):
        await llm.agenerate("Hi")
    with pytest.raises(ProviderUnavailableError):
        llm.generate("Hi")


# ---------------------------------------------------------------------- prompt cache seam
@pytest.mark.mlx
def test_prompt_cache_seam_returns_caches_and_a_reused_cache_keeps_the_output(
    mlx_llm: Any, assert_engine_empty: Any
) -> None:
    before = mlx_llm.stats()["prompt_cache"]
    cold = mlx_llm.generate("Name a famous bridge.", max_output_tokens=10, prompt_cache_key="seam")
    warm = mlx_llm.generate("Name a famous bridge.", max_output_tokens=10, prompt_cache_key="seam")
    assert warm.content == cold.content
    assert warm.usage.cached_tokens == warm.usage.prompt_tokens - 1
    stream = mlx_llm.stream("Name a famous river.", max_output_tokens=4000, prompt_cache_key="s2")
    next(stream)
    stream.close()  # a removed request hands its cache back too
    assert_engine_empty(mlx_llm)
    after = mlx_llm.stats()["prompt_cache"]
    assert after["keyed_entries"] - before["keyed_entries"] == 2 and after["in_use"] == 0


# ---------------------------------------------------------------------- delivery
@pytest.mark.mlx
def test_a_whole_answer_arrives_as_one_item_and_a_stream_piece_by_piece(
    mlx_llm: Any, reference: Any
) -> None:
    from abstractcore.providers.mlx.protocol import Final, Job, ThreadSink

    ids = mlx_llm.tokenize("Name three colours.")
    items: dict[bool, list[Any]] = {}
    for streaming in (True, False):
        sink = ThreadSink(streaming=streaming)
        mlx_llm.engine.submit(Job(prompt_tokens=ids, max_tokens=16), sink)
        got: list[Any] = []
        while not got or not isinstance(got[-1], Final):
            got.append(sink.queue.get(timeout=60))
        items[streaming] = got
    whole, pieces = items[False], items[True]
    assert len(whole) == 1 and len(pieces) > 2  # generate() wakes its caller once
    assert whole[0].text == "".join(pieces[:-1]) + pieces[-1].text == reference.greedy(ids, 16)
    assert whole[0].completion_tokens == pieces[-1].completion_tokens
