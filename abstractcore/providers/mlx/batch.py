"""The engine's BatchGenerator: every call to mlx-lm's continuous batching goes through here.

:class:`Batch` builds the generator (EOS as its stop tokens, the batch sizes, the engine's
stream, and the greedy shortcut where compat.py allows it), inserts requests with their
prompt-cache hits and samplers, and runs one ``next()`` per engine step. Rows that finish
leave the generator by themselves; rows that ended on a stop string, failed or were
cancelled are removed here, handing their KV caches back. A step that raised leaves the
generator in an unknown state, so :meth:`rebuild` replaces it. Engine thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from . import compat
from .options import EngineOptions

__all__ = ["Batch", "BatchStep", "Insert"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Insert:
    """One request for ``BatchGenerator.insert``: the prompt tokens still to prefill, the
    KV cache covering the token ids ``cache_tokens`` before them (None: cold), its sampler,
    its logits processors (a grammar), and whether its log-probabilities are read."""

    prompt: list[int]
    max_tokens: int
    sampler: Callable[[Any], Any]
    cache: list[Any] | None = None
    cache_tokens: list[int] | None = None
    processors: tuple[Any, ...] = ()
    logprobs: bool = False


@dataclass(frozen=True, slots=True)
class BatchStep:
    """What one ``next()`` did: prefill progress, one response per decoded row, and the
    generator's own accounting of the step."""

    prompt_responses: list[Any]
    responses: list[Any]
    prompt_tokens: int
    prompt_time: float
    decode_time: float


class Batch:
    """Owns one ``BatchGenerator``."""

    def __init__(
        self,
        model: Any,
        eos_token_ids: Iterable[int],
        options: EngineOptions,
        stream: Any,
        compat_info: compat.Compat,
    ) -> None:
        self._model = model
        self._eos = sorted(int(t) for t in eos_token_ids)
        self._options = options
        self._stream = stream
        self._compat = compat_info
        #: The rows whose log-probabilities are read (the greedy step computes only those).
        self.logprob_uids: set[int] = set()
        self.generator: Any = self._new()

    def _new(self) -> Any:
        from mlx_lm.generate import BatchGenerator

        gen = BatchGenerator(
            self._model,
            stop_tokens=[[t] for t in self._eos],
            completion_batch_size=self._options.max_batch_size,
            prefill_batch_size=self._options.prefill_rows,
            prefill_step_size=self._options.prefill_step_size,
            stream=self._stream,
        )
        if self._compat.allows("greedy_step"):
            compat.install_greedy_step(gen, self.logprob_uids)
        return gen

    def insert(self, entries: Sequence[Insert]) -> list[int]:
        """Add requests; their uids, in order."""
        hits = any(e.cache is not None for e in entries)
        processors = any(e.processors for e in entries)
        uids: list[int] = self.generator.insert(
            [e.prompt for e in entries],
            max_tokens=[e.max_tokens for e in entries],
            caches=[e.cache for e in entries] if hits else None,
            all_tokens=[e.cache_tokens or [] for e in entries] if hits else None,
            samplers=[e.sampler for e in entries],
            logits_processors=[list(e.processors) for e in entries] if processors else None,
        )
        self.logprob_uids.update(u for u, e in zip(uids, entries) if e.logprobs)
        return uids

    def forget(self, uid: int) -> None:
        """The request ``uid`` left the batch."""
        self.logprob_uids.discard(uid)

    def step(self) -> BatchStep:
        """One ``next()``: a prefill chunk for the prefilling rows, a token for the others."""
        gen = self.generator
        with gen.stats() as st:
            prompt_responses, responses = gen.next()
        return BatchStep(
            prompt_responses, responses, st.prompt_tokens, st.prompt_time, st.decode_time
        )

    def remove(self, uids: Sequence[int], *, return_caches: bool) -> dict[int, Any]:
        """Drop rows; with ``return_caches``, uid -> (cache, tokens) of each."""
        caches: dict[int, Any] = self.generator.remove(
            list(uids), return_prompt_caches=return_caches
        )
        return caches

    def extract_cache(self, uids: Sequence[int]) -> dict[int, Any]:
        """uid -> (cache, tokens) of rows that stay in the batch (any stage)."""
        got: dict[int, Any] = self.generator.extract_cache(list(uids))
        return got

    def snapshot(self) -> dict[str, Any]:
        """The uids it holds (None where compat.py does not allow reading them) and the bytes
        of its KV caches."""
        uids = None
        if self._compat.allows("generator_snapshot"):
            uids = compat.generator_uids(self.generator)
        return {"generator_uids": uids, "cache_bytes": int(self.generator.prompt_cache_nbytes)}

    def rebuild(self) -> None:
        """Replace the generator (after a step failed: its state is unknown)."""
        self.close()
        self.logprob_uids.clear()  # every row was failed
        self.generator = self._new()

    def close(self) -> None:
        """Release the generator."""
        old, self.generator = self.generator, None
        if old is None:
            return
        try:
            old.close()
        except Exception:  # a generator being replaced or shut down: nothing left to serve
            log.warning("closing the BatchGenerator raised", exc_info=True)
