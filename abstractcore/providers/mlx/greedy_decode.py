"""Greedy decode steps that skip the log-probabilities nobody reads.

Every decode step of mlx-lm's ``GenerationBatch`` normalizes the whole logits matrix
(``logits - logsumexp(logits)``, rows x vocabulary) and splits it into one array per row,
because a sampler may want log-probabilities and a response carries them. This engine never
reads them, and a greedy sampler does not need them: the arg-max of ``logits - c`` is the
arg-max of ``logits``. With SmolLM2's 49152-token vocabulary on the 2-core CPU, the
normalization and its per-row slices cost about 80 ms of a 350 ms step at 32 rows (the
exponentials run at ~15 ns per element there), and skipping them left 32 of 32 greedy
sequences token-for-token identical.

:class:`GreedyGenerationBatch` takes that shortcut only when every row samples greedily and
no row has logits processors; any other batch runs mlx-lm's own step. :func:`install` turns
a ``BatchGenerator``'s generation batch into one. It overrides a private method of mlx-lm
0.32 (pinned ``<0.33`` in pyproject.toml); the greedy-parity tests against
``mlx_lm.generate`` would fail if that method's contract changed.
"""

from __future__ import annotations

from typing import Any, cast

from mlx_lm.generate import GenerationBatch
from mlx_lm.sample_utils import greedy_sampler

__all__ = ["GreedyGenerationBatch", "install"]


class GreedyGenerationBatch(GenerationBatch):
    """A ``GenerationBatch`` whose all-greedy steps compute the arg-max of the raw logits.

    The responses of such a step carry an empty array as ``logprobs``.
    """

    _no_logprobs: Any  # set by install(): the empty array those responses carry

    def _all_greedy(self) -> bool:
        b: Any = self  # mlx-lm declares these attributes loosely (None until filled)
        if not b.samplers or any(b.logits_processors):
            return False
        fallback = b.fallback_sampler
        return all((fallback if s is None else s) is greedy_sampler for s in b.samplers)

    def _step(self) -> tuple[list[int], list[Any]]:
        if not self._all_greedy():
            return super()._step()
        import mlx.core as mx

        b: Any = self
        # The same pipelining as mlx-lm's step: queue the next tokens, then read this step's.
        b._current_tokens = b._next_tokens
        b._current_logprobs = b._next_logprobs
        inputs = b._current_tokens
        logits = b.model(inputs[:, None], cache=b.prompt_cache)[:, -1, :]
        b._next_tokens = mx.argmax(logits, axis=-1)
        b._next_logprobs = [b._no_logprobs] * len(b.uids)
        mx.async_eval(b._next_tokens)  # type: ignore[no-untyped-call]
        mx.eval(inputs, b._current_logprobs)
        tokens: list[int] = inputs.tolist()
        for context, token in zip(b.tokens, tokens):
            context.append(token)  # self.tokens always lists what the KV cache holds
        return tokens, b._current_logprobs


def install(generator: Any) -> None:
    """Make ``generator``'s generation batch (the one every new batch is merged into) skip
    log-probabilities on all-greedy steps."""
    import mlx.core as mx

    batch = generator._generation_batch
    if type(batch) is GenerationBatch:
        batch.__class__ = GreedyGenerationBatch
        cast(GreedyGenerationBatch, batch)._no_logprobs = mx.zeros((0,))
