"""MLXProvider's four verbs, stops, limits, errors, timeouts and cancellation (real model)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from abstractcore.errors import (
    ContextLengthError,
    InvalidRequestError,
    RequestTimeoutError,
)

pytestmark = pytest.mark.mlx

PROMPT = "What is the capital of France?"
LONG_STORY = "Write a very long story about a lighthouse keeper and the sea."


# ---------------------------------------------------------------------- streams and verbs
def test_stream_joins_to_generate_content_and_last_chunk_carries_usage(mlx_llm: Any) -> None:
    full = mlx_llm.generate(PROMPT, max_output_tokens=16)
    chunks = list(mlx_llm.stream(PROMPT, max_output_tokens=16))
    assert "".join(c.content for c in chunks) == full.content
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.finish_reason == full.finish_reason
    # cached_tokens differ: the stream reuses the KV cache the first request left behind.
    assert _counts(last.usage) == _counts(full.usage)
    assert last.usage is not None and last.usage.prompt_tokens == len(mlx_llm.tokenize(PROMPT))
    assert full.provider == "mlx" and full.timing.ttft_s is not None and full.timing.total_s


@pytest.mark.anyio
async def test_async_verbs_match_sync_and_never_block_the_loop(
    mlx_llm: Any, no_blocking_loop: Any
) -> None:
    prompt = "Say thank you in Japanese, then in Greek."
    full = await mlx_llm.agenerate(prompt, max_output_tokens=16)
    chunks = [c async for c in mlx_llm.astream(prompt, max_output_tokens=16)]
    assert "".join(c.content for c in chunks) == full.content
    assert not any("\ufffd" in c.content for c in chunks), "a UTF-8 character was split"
    assert chunks[-1].finish_reason == full.finish_reason
    assert _counts(chunks[-1].usage) == _counts(full.usage)
    sync = await asyncio.to_thread(mlx_llm.generate, prompt, max_output_tokens=16)
    assert sync.content == full.content


def test_max_output_tokens_ends_with_length_and_exact_count(mlx_llm: Any) -> None:
    r = mlx_llm.generate("Count from one to one hundred in words.", max_output_tokens=5)
    assert r.finish_reason == "length"
    assert r.usage.completion_tokens == 5


# ---------------------------------------------------------------------- stop strings
def test_stop_strings_cut_the_text_and_never_leak(mlx_llm: Any) -> None:
    chunks = [c.content for c in mlx_llm.stream(PROMPT, max_output_tokens=16)]
    full = "".join(chunks)
    pieces = [c for c in chunks if len(c.strip()) >= 2]
    assert len(pieces) >= 4, chunks
    k = 1
    stops = [
        pieces[k],  # exactly one token's text
        pieces[k][-2:] + pieces[k + 1][:2],  # straddles a chunk boundary
        pieces[k] + pieces[k + 1] + pieces[k + 2],  # several tokens
    ]
    for stop in stops:
        assert stop in full
        expected = full[: full.index(stop)]
        streamed = list(mlx_llm.stream(PROMPT, max_output_tokens=16, stop=stop))
        text = "".join(c.content for c in streamed)
        assert text == expected, stop
        assert streamed[-1].finish_reason == "stop"
        assert all(stop not in c.content for c in streamed)
        assert mlx_llm.generate(PROMPT, max_output_tokens=16, stop=[stop]).content == expected
    # The earliest of several stops wins; a stop that never appears changes nothing.
    first, later = pieces[k + 2], pieces[k]
    r = mlx_llm.generate(PROMPT, max_output_tokens=16, stop=[first, later, "zzzq"])
    assert r.content == full[: min(full.index(first), full.index(later))]
    assert mlx_llm.generate(PROMPT, max_output_tokens=16, stop="zzzq").content == full


# ---------------------------------------------------------------------- validation
def test_context_length_error_before_admission(mlx_llm: Any) -> None:
    before = mlx_llm.stats()["submitted"]
    with pytest.raises(ContextLengthError) as exc:
        mlx_llm.stream("hello " * 9000)  # raised at the call, not on first iteration
    assert exc.value.field == "messages"
    with pytest.raises(ContextLengthError) as exc:
        mlx_llm.generate(PROMPT, max_output_tokens=mlx_llm.context_length)
    assert exc.value.field == "max_output_tokens"
    assert mlx_llm.stats()["submitted"] == before


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_p": 2.0}, "min_p"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"temperature": -1}, "temperature"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"top_p": 0}, "top_p"),
        ({"prompt": ""}, "prompt"),
    ],
)
def test_bad_request_values_name_the_field(
    mlx_llm: Any, kwargs: dict[str, Any], field: str
) -> None:
    kwargs = {"prompt": PROMPT, **kwargs}
    with pytest.raises(InvalidRequestError) as exc:
        mlx_llm.generate(**kwargs)
    assert exc.value.field == field


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_batch_size", 0), ("prefill_batch_size", "8"), ("max_queue", -1), ("queue_timeout_s", 0),
     ("prefill_step_size", True), ("temperature", -0.5), ("solo_decode", "yes"),
     ("fast_cpu_ops", 1)],
)  # fmt: skip
def test_bad_engine_options_name_the_option(
    embedded_model_dir: Path, option: str, value: Any
) -> None:
    from abstractcore.providers.mlx.provider import MLXProvider

    with pytest.raises(InvalidRequestError) as exc:
        MLXProvider(str(embedded_model_dir), **{option: value})
    assert exc.value.field == option


# ---------------------------------------------------------------------- timeouts, cancellation
def test_request_timeout_raises_and_frees_the_slot(mlx_llm: Any, assert_engine_empty: Any) -> None:
    with pytest.raises(RequestTimeoutError):
        mlx_llm.generate("Write a long story about a dragon.", max_output_tokens=4000, timeout=0.3)
    assert_engine_empty(mlx_llm)


@pytest.mark.anyio
async def test_async_request_timeout(mlx_llm: Any, assert_engine_empty: Any) -> None:
    with pytest.raises(RequestTimeoutError):
        await mlx_llm.agenerate(
            "Write a long story about a cat.", max_output_tokens=4000, timeout=0.3
        )
    await asyncio.to_thread(assert_engine_empty, mlx_llm)


def test_closing_a_stream_removes_the_request_within_one_step(
    mlx_llm: Any, assert_engine_empty: Any
) -> None:
    stream = mlx_llm.stream("Write a long story about a robot.", max_output_tokens=4000)
    for _ in range(3):
        next(stream)
    stream.close()  # the cancel is queued now
    steps_after_cancel = mlx_llm.stats()["steps"]
    snap = mlx_llm.engine.snapshot()
    assert snap["steps"] - steps_after_cancel <= 1
    assert snap["generator_uids"] == []
    assert_engine_empty(mlx_llm)


def test_dropping_an_unfinished_stream_cancels_it(mlx_llm: Any, assert_engine_empty: Any) -> None:
    stream = mlx_llm.stream("Write a long story about a whale.", max_output_tokens=4000)
    next(stream)
    cancelled = mlx_llm.stats()["cancelled"]
    del stream  # garbage collection closes the generator, which cancels the request
    assert_engine_empty(mlx_llm)
    assert mlx_llm.stats()["cancelled"] == cancelled + 1


@pytest.mark.anyio
async def test_cancelling_a_task_propagates_and_frees_the_request(
    mlx_llm: Any, assert_engine_empty: Any
) -> None:
    started = asyncio.Event()
    seen: list[str] = []

    async def consume() -> None:
        async for chunk in mlx_llm.astream("Write a long poem about rain.", max_output_tokens=4000):
            seen.append(chunk.content)
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # A cancelled agenerate that never got a token is dropped from the queue as well.
    pending = asyncio.create_task(mlx_llm.agenerate("Describe the moon.", max_output_tokens=4000))
    await asyncio.sleep(0)  # let it submit
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await asyncio.to_thread(assert_engine_empty, mlx_llm)
    stats = mlx_llm.stats()
    assert stats["cancelled"] >= 2


# ---------------------------------------------------------------------- threads
def test_sixteen_threads_calling_generate_share_the_batch(mlx_llm: Any, prompts: list[str]) -> None:
    results: list[Any] = [None] * 16
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results[i] = mlx_llm.generate(prompts[i % 8], max_output_tokens=8)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    before = mlx_llm.stats()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = mlx_llm.stats()
    assert not errors, errors
    steps = after["decode_steps"] - before["decode_steps"]
    mean_batch = (after["generated_tokens"] - before["generated_tokens"]) / steps
    assert mean_batch > 1
    for i in range(8):  # the same prompt in two threads gives the same greedy text
        assert results[i].content == results[i + 8].content


def test_stats_report_engine_counters(mlx_llm: Any) -> None:
    mlx_llm.generate(PROMPT, max_output_tokens=2)
    stats = mlx_llm.stats()
    for key in (
        "active", "queued", "finished", "cancelled", "errors", "prompt_tokens",
        "generated_tokens", "steps", "mean_batch_size", "prefill_tok_s", "decode_tok_s",
        "model_step_s", "wall_s", "solo_requests", "solo_handovers",
    ):  # fmt: skip
        assert key in stats
    assert stats["finished"] > 0 and stats["decode_tok_s"] > 0
    memory = stats["memory"]  # MLX's allocator: the weights alone are ~540 MB
    assert memory["peak_bytes"] >= memory["active_bytes"] > 500e6 and memory["cache_bytes"] >= 0


def _counts(usage: Any) -> tuple[int, int]:
    """Usage without cached_tokens (which depends on what earlier requests left cached)."""
    assert usage is not None
    return usage.prompt_tokens, usage.completion_tokens


# Python reports the abandoned task's coroutine when it is collected: that is the scenario.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("verb", ["astream", "agenerate"])
def test_a_request_whose_event_loop_closes_is_dropped(
    mlx_llm: Any, assert_engine_empty: Any, verb: str
) -> None:
    # The caller's loop closes without cancelling its task (a thread that ended, say): nobody
    # can read the answer, so the engine must stop generating it rather than run to the end.
    async def start() -> asyncio.Future[Any]:
        if verb == "agenerate":
            call = mlx_llm.agenerate(LONG_STORY, max_output_tokens=4000)
        else:
            call = mlx_llm.astream(LONG_STORY, max_output_tokens=4000).__anext__()
        task = asyncio.ensure_future(call)
        while mlx_llm.stats()["active"] == 0:
            await asyncio.sleep(0.01)
        return task

    cancelled = mlx_llm.stats()["cancelled"]
    loop = asyncio.new_event_loop()
    task = loop.run_until_complete(start())
    loop.close()
    deadline = time.monotonic() + 30
    while mlx_llm.stats()["cancelled"] == cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mlx_llm.stats()["cancelled"] == cancelled + 1
    assert_engine_empty(mlx_llm)
    del task
    gc.collect()  # report the abandoned coroutine here, under this test's filter
