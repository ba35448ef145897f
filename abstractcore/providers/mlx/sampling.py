"""Per-request samplers for the batch engine.

mlx-lm's ``GenerationBatch`` samples the whole batch in one call only when every row holds
the *same* sampler object, so unseeded samplers are shared per settings tuple. A seeded
request gets a sampler of its own that draws with an explicit PRNG key advanced once per
token: its draws then depend only on its seed and its own logits, not on its batch-mates or
on the global PRNG state. Everything here runs on the engine thread (it creates MLX arrays).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["SamplerCache", "SamplingParams", "make_seeded_sampler"]

Sampler = Callable[[Any], Any]


class SamplingParams(NamedTuple):
    """The settings that decide a sampler; ``temperature`` 0 means greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0

    @property
    def greedy(self) -> bool:
        """True when the argmax decides (no randomness at all)."""
        return self.temperature <= 0.0


def _filters(params: SamplingParams, vocab_size: int) -> list[Callable[[Any], Any]]:
    """The same logit filters, in the same order, as ``mlx_lm.sample_utils.make_sampler``."""
    from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

    out: list[Callable[[Any], Any]] = []
    if 0.0 < params.top_p < 1.0:
        out.append(lambda x: apply_top_p(x, params.top_p))
    if params.min_p > 0.0:
        out.append(lambda x: apply_min_p(x, params.min_p))
    if 0 < params.top_k < vocab_size:
        out.append(lambda x: apply_top_k(x, params.top_k))
    return out


def make_seeded_sampler(params: SamplingParams, seed: int, vocab_size: int) -> Sampler:
    """A sampler with its own PRNG key, split once per call (one call per generated token)."""
    import mlx.core as mx

    filters = _filters(params, vocab_size)
    inv_temp = 1.0 / params.temperature
    key = mx.random.key(seed & 0xFFFF_FFFF_FFFF_FFFF)

    def sampler(logprobs: Any) -> Any:
        nonlocal key
        key, sub = mx.random.split(key)
        for f in filters:
            logprobs = f(logprobs)
        return mx.random.categorical(logprobs * inv_temp, key=sub)

    return sampler


class SamplerCache:
    """One shared sampler object per distinct unseeded settings tuple (keeps sampling batched)."""

    def __init__(self, vocab_size: int, max_entries: int = 256) -> None:
        self._vocab_size = vocab_size
        self._max_entries = max_entries
        self._samplers: dict[SamplingParams, Sampler] = {}

    def get(self, params: SamplingParams, seed: int | None = None) -> Sampler:
        """The sampler for ``params``; a fresh seeded one when ``seed`` is given and not greedy."""
        from mlx_lm.sample_utils import greedy_sampler, make_sampler

        if params.greedy:
            return greedy_sampler
        if seed is not None:
            return make_seeded_sampler(params, seed, self._vocab_size)
        sampler = self._samplers.get(params)
        if sampler is None:
            if len(self._samplers) >= self._max_entries:
                self._samplers.clear()  # running requests keep their own references
            top_k = params.top_k if params.top_k < self._vocab_size else 0
            sampler = make_sampler(
                params.temperature, top_p=params.top_p, min_p=params.min_p, top_k=top_k
            )
            self._samplers[params] = sampler
        return sampler
