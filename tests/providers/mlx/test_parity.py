"""The batch engine reproduces single-stream generation exactly (real embedded model)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

pytestmark = [pytest.mark.mlx, pytest.mark.anyio]

N = 16


def _window(before: dict[str, Any], after: dict[str, Any]) -> float:
    steps = after["decode_steps"] - before["decode_steps"]
    return (after["generated_tokens"] - before["generated_tokens"]) / max(1, steps)


async def test_eight_prompts_batched_equal_mlx_lm_one_by_one(
    mlx_llm: Any, reference: Any, prompts: list[str], assert_engine_empty: Any
) -> None:
    ids = [mlx_llm.tokenize(p) for p in prompts]
    before = mlx_llm.stats()
    results = await asyncio.gather(*(mlx_llm.agenerate(p, max_output_tokens=N) for p in prompts))
    after = mlx_llm.stats()
    assert _window(before, after) > 4, "the eight requests did not share decode steps"
    for p_ids, r in zip(ids, results):
        assert r.content == reference.greedy(p_ids, N)
        assert r.usage.prompt_tokens == len(p_ids)
        assert r.finish_reason in ("stop", "length")
        if r.finish_reason == "length":
            assert r.usage.completion_tokens == N
    await asyncio.to_thread(assert_engine_empty, mlx_llm)


async def test_request_joining_mid_generation_equals_its_solo_run(
    mlx_llm: Any, reference: Any, prompts: list[str]
) -> None:
    long_prompt, late_prompt = prompts[7], prompts[2]
    parts: list[str] = []
    late: asyncio.Task[Any] | None = None
    before = mlx_llm.stats()
    async with contextlib.aclosing(mlx_llm.astream(long_prompt, max_output_tokens=N)) as chunks:
        async for chunk in chunks:
            parts.append(chunk.content)
            if len(parts) == 3:
                assert chunk.finish_reason is None
                late = asyncio.create_task(mlx_llm.agenerate(late_prompt, max_output_tokens=12))
    assert late is not None
    late_result = await late
    assert _window(before, mlx_llm.stats()) > 1, "the late request never joined the batch"
    assert "".join(parts) == reference.greedy(mlx_llm.tokenize(long_prompt), N)
    assert late_result.content == reference.greedy(mlx_llm.tokenize(late_prompt), 12)


async def test_seeded_sampling_is_identical_alone_and_inside_a_batch_of_32(
    mlx_llm: Any, prompts: list[str]
) -> None:
    short = "Be brief."  # a short system prompt keeps 32 prefills cheap
    seeded: dict[str, Any] = {"temperature": 0.9, "top_p": 0.95, "seed": 1234}
    seeded.update(max_output_tokens=10, system_prompt=short)
    alone = await mlx_llm.agenerate(prompts[1], **seeded)
    others = [
        mlx_llm.agenerate(
            prompts[i % 8],
            system_prompt=short,
            max_output_tokens=10,
            temperature=(i % 3) * 0.5,
            seed=None if i % 2 else 100 + i,
        )
        for i in range(31)
    ]
    in_batch = await asyncio.gather(
        *others[:15], mlx_llm.agenerate(prompts[1], **seeded), *others[15:]
    )
    assert in_batch[15].content == alone.content
    # The seed matters: another seed draws another text, and the same seed twice agrees.
    again, other = await asyncio.gather(
        mlx_llm.agenerate(prompts[1], **seeded),
        mlx_llm.agenerate(prompts[1], **{**seeded, "seed": 99, "temperature": 1.5}),
    )
    assert again.content == alone.content
    assert other.content != alone.content
