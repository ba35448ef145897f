"""compat.py, the engine's one boundary to mlx-lm's internals: on an mlx-lm version it was not
verified against, every optimization that relies on a private detail switches itself off,
says so in stats(), and the engine still gives mlx-lm's own greedy output."""

from __future__ import annotations

import asyncio
import itertools
import warnings
from pathlib import Path
from typing import Any

import pytest

from abstractcore.providers.mlx import compat

pytestmark = pytest.mark.mlx

_UNKNOWN = (f"0.99.{i}" for i in itertools.count())  # the warning is once per version


def test_the_installed_version_is_verified() -> None:
    info = compat.check()
    assert info.version == compat.mlx_lm_version() and info.verified
    assert info.disabled == {} and all(info.allows(name) for name in compat.OPTIMIZATIONS)


def test_an_unknown_version_disables_every_private_optimization(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    version = next(_UNKNOWN)
    monkeypatch.setattr(compat, "mlx_lm_version", lambda: version)
    with pytest.warns(compat.MlxLmVersionWarning, match=version):
        info = compat.check()
    assert not info.verified and set(info.disabled) == set(compat.OPTIMIZATIONS)
    assert not any(info.allows(name) for name in compat.OPTIMIZATIONS)
    assert version in info.disabled["greedy_step"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compat.check()  # warned once already: not again


def test_an_unknown_version_serves_mlx_lms_greedy_output_through_its_public_api(
    embedded_model_dir: Path,
    reference: Any,
    prompts: list[str],
    monkeypatch: pytest.MonkeyPatch,
    no_thread_leak: None,
) -> None:
    from abstractcore.providers.mlx.provider import MLXProvider

    version = next(_UNKNOWN)
    monkeypatch.setattr(compat, "mlx_lm_version", lambda: version)
    with pytest.warns(compat.MlxLmVersionWarning):
        llm = MLXProvider(str(embedded_model_dir))
    with llm:
        stats = llm.stats()
        assert stats["mlx_lm"]["version"] == version and not stats["mlx_lm"]["verified"]
        assert set(stats["mlx_lm"]["disabled"]) == set(compat.OPTIMIZATIONS)
        assert stats["cpu_ops"] == [] and stats["row_padding"] == {}
        assert not stats["prompt_cache"]["enabled"]
        assert version in stats["prompt_cache"]["reason"]

        def generation_batch_class(engine: Any) -> str:
            return type(engine.core.batch.generator._generation_batch).__name__

        assert llm.engine.call(generation_batch_class) == "GenerationBatch"  # mlx-lm's own
        assert llm.engine.snapshot()["generator_uids"] is None

        alone = llm.generate(prompts[0], max_output_tokens=12)  # solo lane
        assert alone.content == reference.greedy(llm.tokenize(prompts[0]), 12)
        batch = prompts[1:5]

        async def together() -> list[Any]:
            return await asyncio.gather(*(llm.agenerate(p, max_output_tokens=12) for p in batch))

        for prompt, response in zip(batch, asyncio.run(together())):  # batched
            assert response.content == reference.greedy(llm.tokenize(prompt), 12)
        again = llm.generate(prompts[0], max_output_tokens=12, prompt_cache_key="k")
        assert again.usage.cached_tokens == 0 and again.content == alone.content
