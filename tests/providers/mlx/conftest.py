"""Fixtures for the MLX engine tests: one shared provider on the embedded model, and mlx-lm
itself (the same weights loaded on the main thread) as the reference for parity checks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Distinct chat prompts of different lengths (so prefill batches are right-padded).
_PROMPTS = [
    "What is the capital of France?",
    "Name three colours.",
    "Write a haiku about the sea.",
    "What is 12 plus 30?",
    "Give me one tip for learning to cook, in a single sentence please.",
    "Who wrote Romeo and Juliet?",
    "Say hello in Spanish.",
    "Explain what a noun is to a child who is five years old.",
]


@pytest.fixture(scope="session")
def mlx_llm(embedded_model_dir: Path) -> Iterator[Any]:
    """One MLXProvider with default engine options, shared by the test modules."""
    from abstractcore.providers.mlx.provider import MLXProvider

    llm = MLXProvider(str(embedded_model_dir))
    yield llm
    llm.close()


class Reference:
    """Single-stream ``mlx_lm.generate`` on the main thread: what the engine must reproduce."""

    def __init__(self, model_dir: Path) -> None:
        from abstractcore.providers.mlx.loading import load_model

        self.model, self.tokenizer = load_model(model_dir)
        self._cache: dict[tuple[tuple[int, ...], int], str] = {}

    def greedy(self, prompt_tokens: list[int], max_tokens: int) -> str:
        """The greedy completion of ``prompt_tokens`` (EOS excluded), memoized.

        A UTF-8 character cut off by ``max_tokens`` is dropped, as the engine does (mlx-lm
        decodes it to U+FFFD).
        """
        import mlx_lm

        key = (tuple(prompt_tokens), max_tokens)
        if key not in self._cache:
            self._cache[key] = mlx_lm.generate(
                self.model, self.tokenizer, prompt=prompt_tokens, max_tokens=max_tokens
            ).rstrip("\ufffd")
        return self._cache[key]


@pytest.fixture(scope="session")
def reference(embedded_model_dir: Path, mlx_llm: Any) -> Reference:
    """mlx-lm's own generation (after ``mlx_llm``, whose constructor preloads the BLAS)."""
    return Reference(embedded_model_dir)


def _assert_engine_empty(llm: Any) -> None:
    snap = llm.engine.snapshot()
    assert snap["generator_uids"] == [] and snap["solo_uid"] is None, snap
    assert snap["cache_bytes"] == 0, snap
    assert snap["active"] == 0 and snap["waiting"] == 0, snap
    stats = llm.stats()
    assert stats["active"] == 0 and stats["queued"] == 0, stats


@pytest.fixture
def prompts() -> list[str]:
    """Eight distinct chat prompts of different lengths."""
    return list(_PROMPTS)


@pytest.fixture
def assert_engine_empty() -> Any:
    """A check that no request, uid or KV memory is left anywhere in a provider's engine."""
    return _assert_engine_empty
