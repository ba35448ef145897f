"""KV-byte admission and the engine's memory budgets, on the embedded model."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from abstractcore.errors import ContextLengthError, MemoryBudgetError
from abstractcore.providers.mlx.memory_plan import KV_BLOCK, MemoryPlan

pytestmark = pytest.mark.mlx

# SmolLM2-135M: 30 layers, 3 key/value heads of 64, float32 keys and values.
SMOLLM2_KV_BYTES_PER_TOKEN = 30 * 2 * 3 * 64 * 4


def _plan(budget: int, per_token: int = 1000) -> MemoryPlan:
    return MemoryPlan(
        device_bytes=10**10, weights_bytes=10**8, kv_budget_bytes=budget,
        prompt_cache_bytes=0, mlx_cache_limit_bytes=0, kv_bytes_per_token=per_token,
    )  # fmt: skip


def test_a_reservation_rounds_the_tokens_up_to_the_cache_block() -> None:
    plan = _plan(10**9)
    assert plan.reservation(10, 20) == KV_BLOCK * 1000
    assert plan.reservation(200, 56) == KV_BLOCK * 1000
    assert plan.reservation(200, 57) == 2 * KV_BLOCK * 1000


def test_a_request_that_can_never_fit_names_the_field_to_lower() -> None:
    plan = _plan(4 * KV_BLOCK * 1000)  # room for 1024 tokens
    assert plan.check(100, 900) == 4 * KV_BLOCK * 1000
    with pytest.raises(MemoryBudgetError) as exc:
        plan.check(100, 1000)
    assert exc.value.field == "max_output_tokens" and "kv_cache_bytes" in str(exc.value)
    assert isinstance(exc.value, ContextLengthError)  # the server's context_length_exceeded
    with pytest.raises(MemoryBudgetError) as exc:
        plan.check(1100, 1)
    assert exc.value.field == "messages"


def test_default_budgets_come_from_the_device_and_are_reported(mlx_llm: Any) -> None:
    memory = mlx_llm.stats()["memory"]
    assert memory["kv_bytes_per_token"] == SMOLLM2_KV_BYTES_PER_TOKEN  # measured at load
    assert 500e6 < memory["weights_bytes"] < 600e6
    left = memory["device_bytes"] - memory["weights_bytes"]
    assert memory["kv_budget_bytes"] == left // 2
    assert memory["prompt_cache_budget_bytes"] == min(left // 10, 2 << 30)
    assert memory["mlx_cache_limit_bytes"] == min(left // 20, 1 << 30)
    assert mlx_llm.stats()["prompt_cache"]["budget"] == memory["prompt_cache_budget_bytes"]
    for key in ("kv_reserved_bytes", "kv_reserved_peak_bytes", "kv_waits"):
        assert key in memory


def test_requests_wait_for_kv_memory_and_finish_as_they_would_alone(
    embedded_model_dir: Path, prompts: list[str]
) -> None:
    from abstractcore.providers.mlx.provider import MLXProvider

    one = KV_BLOCK * SMOLLM2_KV_BYTES_PER_TOKEN  # a short prompt + 16 tokens: one block
    with MLXProvider(str(embedded_model_dir), prompt_cache_bytes=0) as free:
        alone = [free.generate(p, max_output_tokens=16).content for p in prompts[:6]]
    with MLXProvider(
        str(embedded_model_dir), kv_cache_bytes=2 * one, prompt_cache_bytes=0,
        mlx_cache_limit_bytes=64 << 20,
    ) as llm:  # fmt: skip
        results: list[str | None] = [None] * 6
        barrier = threading.Barrier(6)

        def worker(i: int) -> None:
            barrier.wait()
            results[i] = llm.generate(prompts[i], max_output_tokens=16).content

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        memory = llm.stats()["memory"]
        assert results == alone  # waiting changes when a request runs, not what it says
        assert memory["kv_reserved_peak_bytes"] == 2 * one  # never more than the budget
        assert memory["kv_waits"] >= 1
        assert memory["kv_reserved_bytes"] == 0  # all finished: nothing reserved
        assert memory["mlx_cache_limit_bytes"] == 64 << 20

        before = llm.stats()["submitted"]
        with pytest.raises(MemoryBudgetError) as exc:  # 2 blocks of room, 3 asked for
            llm.generate(prompts[0], max_output_tokens=2 * KV_BLOCK)
        assert exc.value.field == "max_output_tokens"
        assert llm.stats()["submitted"] == before  # refused before it was queued
        assert llm.generate(prompts[0], max_output_tokens=16).content == alone[0]


def test_the_memory_options_are_validated(embedded_model_dir: Path) -> None:
    from abstractcore.errors import InvalidRequestError
    from abstractcore.providers.mlx.provider import MLXProvider

    for option, value in (("kv_cache_bytes", 0), ("mlx_cache_limit_bytes", -1)):
        with pytest.raises(InvalidRequestError) as exc:
            MLXProvider(str(embedded_model_dir), **{option: value})
        assert exc.value.field == option
