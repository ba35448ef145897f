"""64 mixed requests at once: every one finishes or cancels cleanly, nothing is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import pytest

pytestmark = [pytest.mark.mlx, pytest.mark.anyio]


async def test_64_mixed_requests_finish_or_cancel_cleanly(
    mlx_llm: Any, prompts: list[str], assert_engine_empty: Any
) -> None:
    rng = random.Random(7)
    before = mlx_llm.stats()
    stops = [None, ".", " the", ["!", "\n"]]

    async def one(i: int) -> str:
        prompt = prompts[i % 8] + " Be brief." * rng.randrange(0, 4)
        kwargs: dict[str, Any] = {
            "system_prompt": "Be brief.",  # a short system prompt keeps prefill cheap
            "max_output_tokens": rng.randrange(2, 12),
            "temperature": rng.choice([0.0, 0.0, 0.7, 1.2]),
            "top_k": rng.choice([None, 20]),
            "seed": rng.choice([None, i]),
            "stop": rng.choice(stops),
        }
        mode = i % 4
        if mode == 0:  # break out of a stream after one chunk
            async with contextlib.aclosing(mlx_llm.astream(prompt, **kwargs)) as chunks:
                async for _ in chunks:
                    break
            return "closed"
        if mode == 1 and i % 8 == 1:  # cancel the awaiting task once it has been scheduled
            task = asyncio.create_task(mlx_llm.agenerate(prompt, **kwargs))
            await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return "cancelled"
        r = await mlx_llm.agenerate(prompt, **kwargs)
        assert r.finish_reason in ("stop", "length")
        assert r.usage.completion_tokens <= kwargs["max_output_tokens"]
        if r.finish_reason == "length":
            assert r.usage.completion_tokens == kwargs["max_output_tokens"]
        stop = kwargs["stop"]
        for s in [stop] if isinstance(stop, str) else stop or []:
            assert s not in r.content
        return r.finish_reason

    outcomes = await asyncio.gather(*(one(i) for i in range(64)))
    after = mlx_llm.stats()
    assert outcomes.count("closed") == 16 and outcomes.count("cancelled") == 8
    assert after["submitted"] - before["submitted"] == 64
    assert after["errors"] == before["errors"]
    ended = (after["finished"] - before["finished"]) + (after["cancelled"] - before["cancelled"])
    assert ended == 64
    assert after["mean_batch_size"] > 1
    await asyncio.to_thread(assert_engine_empty, mlx_llm)
