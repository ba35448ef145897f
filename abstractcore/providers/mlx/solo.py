"""One request decoded on its own, without BatchGenerator's batch machinery.

With a single request in flight, BatchGenerator still pays for batching: BatchKVCache keeps
per-row offsets and builds an attention mask in every layer, and GenerationBatch does per-row
list bookkeeping; a batch of one decodes measurably slower than mlx-lm's ``generate_step``
(docs/concurrency.md, "A lone request"). So while a request is alone in the engine it runs
here, with the model's own cache layers and ``generate_step``'s pipelining (the next token's
forward pass is queued before the current token is read), and the engine hands it over to
the BatchGenerator -- remaining prompt, KV cache, the tokens it covers, its sampler -- as soon
as another request arrives. Nothing is recomputed at the handover.

:class:`SoloLane` is that lifecycle as the engine sees it: start a request, step it, end
it (its KV cache goes to the prompt cache), or hand it over to the :class:`~.batch.Batch`.
Everything here runs on the engine thread, inside its MLX stream.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from .batch import Batch, Insert

if TYPE_CHECKING:
    from .request_state import RequestState

__all__ = ["Handover", "SoloDecode", "SoloLane", "SoloStep"]

#: Release MLX's buffer cache every this many tokens, as ``generate_step`` does.
_CLEAR_CACHE_EVERY = 256


class Handover(NamedTuple):
    """What ``BatchGenerator.insert`` needs to continue a solo request exactly."""

    prompt: list[int]  # the input still to feed: the unprefilled prompt, or the last token
    cache: list[Any] | None  # KV cache layers covering ``tokens`` (None: nothing cached yet)
    tokens: list[int]  # the token ids the cache covers
    max_tokens: int  # tokens still to generate


class SoloDecode:
    """A lone request's prefill and decode: one prompt chunk or one token per ``step()``."""

    def __init__(
        self,
        model: Any,
        prompt: Sequence[int],
        *,
        stream: Any,
        sampler: Callable[[Any], Any],
        max_tokens: int,
        prefill_step_size: int,
        cache: list[Any] | None = None,
        cached: int = 0,
        processors: Sequence[Callable[[Any, Any], Any]] = (),
        logprobs: bool = True,
    ) -> None:
        from mlx_lm.models.cache import make_prompt_cache
        from mlx_lm.sample_utils import greedy_sampler

        if not 0 <= cached < len(prompt):
            raise ValueError(f"cached={cached} must leave a prompt token to feed")
        self.model = model
        self.stream = stream
        self.sampler = sampler
        #: Logits processors (a grammar), called as mlx-lm's generate_step calls them.
        self.processors = tuple(processors)
        #: A greedy request that wants no logprobs takes the arg-max of the logits: the same
        #: token as the arg-max of ``logits - logsumexp(logits)``, without normalizing the
        #: vocabulary every step (0.7 ms of a 30 ms one-row step on the CPU), as the batch's
        #: greedy step does (compat.py).
        self._argmax_only = sampler is greedy_sampler and not logprobs
        self.max_tokens = max_tokens
        self.prefill_step_size = prefill_step_size
        self.cache: list[Any] = cache if cache is not None else make_prompt_cache(model)
        self.tokens: list[int] = list(prompt[:cached])  # what the KV cache covers
        self.prompt_done = cached  # prompt tokens in the KV cache
        self.generated = 0
        self._todo = list(prompt[cached:])  # prompt tokens not yet fed to the model
        self._next: Any = None  # (next token, its logprobs), computed by a queued forward pass
        self._unfed: int | None = None  # the last token read, when it was not fed back
        #: The log-probabilities the last token returned was sampled from.
        self.last_logprobs: Any = None

    @property
    def pending(self) -> bool:
        """True when a sampled token is in flight and must be read before a handover."""
        return self._next is not None

    def step(self, *, queue_next: bool = True) -> int | None:
        """Prefill one chunk (None) or return the next token.

        With ``queue_next`` false the token read is not fed back to the model, which leaves
        the request ready for :meth:`handover`.
        """
        import mlx.core as mx

        with mx.stream(self.stream):
            return self._step(mx, queue_next)

    def _step(self, mx: Any, queue_next: bool) -> int | None:
        if len(self._todo) > 1:
            n = min(self.prefill_step_size, len(self._todo) - 1)
            chunk, self._todo = self._todo[:n], self._todo[n:]
            self.model(mx.array(chunk)[None], cache=self.cache)
            mx.eval([c.state for c in self.cache])
            mx.clear_cache()
            self.tokens += chunk
            self.prompt_done += n
            return None
        if self._next is None:  # feed the last prompt token: its logits give token one
            if self._unfed is not None:
                raise RuntimeError("the request was handed over or ended")
            last = self._todo.pop()
            self._next = self._forward(mx.array([last]))
            self.tokens.append(last)
            self.prompt_done += 1
        (y, self.last_logprobs), self._next = self._next, None
        fed = queue_next and self.generated + 1 < self.max_tokens
        if fed:
            self._next = self._forward(y)  # decode ahead while this token is read
        token = int(y.item())
        if fed:
            self.tokens.append(token)
        else:
            self._unfed = token
        self.generated += 1
        if self.generated % _CLEAR_CACHE_EVERY == 0:
            mx.clear_cache()
        return token

    def handover(self) -> Handover:
        """The request's state for ``BatchGenerator.insert`` (no token may be pending)."""
        if self._next is not None:
            raise RuntimeError("read the pending token (step(queue_next=False)) first")
        if self._todo:
            prompt = list(self._todo)
        elif self._unfed is not None:
            prompt = [self._unfed]
        else:
            raise RuntimeError("nothing is left to feed: the request has ended")
        return Handover(
            prompt=prompt,
            cache=self.cache if self.tokens else None,
            tokens=list(self.tokens),
            max_tokens=self.max_tokens - self.generated,
        )

    def _forward(self, inputs: Any) -> tuple[Any, Any]:
        """Queue one forward pass over ``inputs`` (shape [n]) and the sampling of its last
        position; returns the lazily computed token (shape [1]) and its logprobs."""
        import mlx.core as mx

        logits = self.model(inputs[None], cache=self.cache)[:, -1, :]
        for processor in self.processors:
            logits = processor(inputs, logits)
        if self._argmax_only:
            y = mx.argmax(logits, axis=-1)
            mx.async_eval(y)  # type: ignore[no-untyped-call]
            return y, None
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        y = self.sampler(logprobs)
        mx.async_eval(y)  # type: ignore[no-untyped-call]
        return y, logprobs[0]


@dataclass(frozen=True, slots=True)
class SoloStep:
    """What one solo step did: the token (None after a prefill chunk), why the request ended
    with it (None: it goes on), how many prompt tokens it prefilled, and the logprobs the
    token was sampled from (one row, MLX; None for a greedy request that asked for none)."""

    token: int | None
    finish: str | None
    prefilled: int
    logprobs: Any = None


class SoloLane:
    """At most one request decoded alone; the engine routes its tokens like a batch row's."""

    def __init__(self, model: Any, stream: Any, prefill_step_size: int, eos: frozenset[int]):
        self._model = model
        self._stream = stream
        self._prefill_step_size = prefill_step_size
        self._eos = eos
        self._uids = itertools.count(-1, -1)  # never collide with BatchGenerator's uids
        self.decode: SoloDecode | None = None
        self.state: RequestState | None = None

    @property
    def active(self) -> bool:
        """True while a request runs here."""
        return self.decode is not None

    def start(
        self,
        state: RequestState,
        sampler: Callable[[Any], Any],
        cache: list[Any] | None,
        cached: int,
        processors: Sequence[Callable[[Any, Any], Any]] = (),
    ) -> int:
        """Begin ``state`` (from ``cache`` covering its first ``cached`` tokens); its uid."""
        job = state.job
        self.decode = SoloDecode(
            self._model,
            job.prompt_tokens,
            stream=self._stream,
            sampler=sampler,
            max_tokens=job.max_tokens,
            prefill_step_size=self._prefill_step_size,
            cache=cache,
            cached=cached,
            processors=processors,
            logprobs=job.top_logprobs is not None,
        )
        self.state = state
        return next(self._uids)

    def step(self, *, queue_next: bool = True) -> SoloStep:
        """One prefill chunk or one token, with BatchGenerator's end rules: EOS ends with
        "stop" (even on the last allowed token), the last allowed token with "length"."""
        decode = self.decode
        assert decode is not None
        before = decode.prompt_done
        token = decode.step(queue_next=queue_next)
        prefilled = decode.prompt_done - before
        if token is None:
            return SoloStep(None, None, prefilled)
        finish = "stop" if token in self._eos else None
        if finish is None and decode.generated >= decode.max_tokens:
            finish = "length"
        return SoloStep(token, finish, prefilled, decode.last_logprobs)

    def end(self) -> tuple[RequestState | None, list[int], list[Any]]:
        """Stop the lane: (its request, the tokens its KV cache covers, that cache)."""
        decode, state = self.decode, self.state
        self.decode = self.state = None
        if decode is None:
            return None, [], []
        return state, decode.tokens, decode.cache

    def hand_over(self, batch: Batch) -> tuple[int, int]:
        """Move the request into ``batch``, which continues it exactly: (its new uid, the
        tokens its KV cache holds). A token in flight must be read first
        (``step(queue_next=False)``); if the insert raises, the request stays here."""
        decode = self.decode
        assert decode is not None
        h = decode.handover()
        (uid,) = batch.insert(
            [
                Insert(
                    prompt=h.prompt,
                    max_tokens=h.max_tokens,
                    sampler=decode.sampler,
                    cache=h.cache,
                    cache_tokens=None if h.cache is None else h.tokens,
                    processors=decode.processors,
                    logprobs=self.state is not None and self.state.job.top_logprobs is not None,
                )
            ]
        )
        self.decode = self.state = None
        return uid, len(h.tokens)
