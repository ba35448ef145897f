"""The engine's prompt-cache side: hits at admission, wave forks, caches coming back.

The engine calls these hooks on its own thread: ``plan`` before admitting a batch (it defers
requests that share a long prefix with a request that is about to prefill it or already is),
``checkout``/``register`` around ``BatchGenerator.insert``, ``after_step`` after every
``next()`` (it follows prefill progress and, once a fork's lead holds the shared prefix,
extracts it into the prefix tree and hands the deferred followers back to the queue), and
``returned`` when a request's final cache comes back (finished, or removed with
``return_prompt_caches=True``).

Why fork from a running request instead of prefilling a separate ``max_tokens=1`` request:
the lead is a real request, so no batch row or decode step is spent on a throwaway token, and
``extract_cache`` works at any stage, so the lead may be one that was admitted a step earlier
(a wave's first request often is: it reaches the engine before the rest of the wave).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import InvalidRequestError
from .prompt_cache import Hit, PromptCacheStore
from .prompt_cache_files import load_cache_file, save_cache_file
from .token_prefix import plan_forks

if TYPE_CHECKING:
    from .batch import Batch
    from .model_setup import ModelSetup
    from .options import EngineOptions
    from .request_state import RequestState

__all__ = ["FORK_MIN_TOKENS", "CacheScheduler"]

#: Fork a wave only when it saves each follower at least this many prefill tokens.
FORK_MIN_TOKENS = 16


@dataclass(eq=False, slots=True)
class _Lease:
    state: RequestState
    hit: Hit | None
    kv: int  # prompt tokens in the request's KV cache so far
    base: int  # of those, the ones it had when it was inserted (prefill progress counts on)


@dataclass(eq=False, slots=True)
class _Fork:
    need: int = 0
    followers: list[RequestState] = field(default_factory=list)


class CacheScheduler:
    """Prompt-cache bookkeeping of one engine (engine thread only)."""

    def __init__(
        self,
        store: PromptCacheStore,
        requeue: Callable[[list[RequestState]], None],
        *,
        model_id: str = "",
        num_layers: int = 0,
        fork_min_tokens: int = FORK_MIN_TOKENS,
    ) -> None:
        self.store = store
        self.model_id = model_id
        self.num_layers = num_layers
        self._requeue = requeue
        self.fork_min_tokens = fork_min_tokens
        self._leases: dict[int, _Lease] = {}
        self._forks: dict[RequestState, _Fork] = {}
        # Followers of a fork whose prefix could not be stored (it exceeds the budget): they
        # run without forking, or they would be deferred behind a new lead again and again.
        self._no_fork: set[RequestState] = set()
        self.forks = 0  # waves forked (a counter for stats and tests)
        #: Requests held back until their fork's lead holds the shared prefix (an int, so
        #: other threads may read it while the engine thread changes the forks).
        self.deferred = 0

    @classmethod
    def for_model(
        cls,
        options: EngineOptions,
        setup: ModelSetup,
        requeue: Callable[[list[RequestState]], None],
        *,
        model_id: str,
    ) -> CacheScheduler:
        """The scheduler and its store for a loaded model, as ``options`` set the budget."""
        store = PromptCacheStore(
            setup.memory.prompt_cache_bytes,  # the option, or memory_plan.py's default
            prefix_cache=options.prefix_cache,
            share_prefix_across_keys=options.share_prefix_across_keys,
            disabled_reason=setup.cache_reason,
        )
        return cls(store, requeue, model_id=model_id, num_layers=setup.num_layers)

    def _recount(self) -> None:
        self.deferred = sum(len(f.followers) for f in self._forks.values())

    def deferred_states(self) -> list[RequestState]:
        """Every deferred request (for shutdown)."""
        return [s for f in self._forks.values() for s in f.followers]

    # ------------------------------------------------------------------ admission
    def plan(self, batch: list[RequestState], active: Iterable[RequestState]) -> list[RequestState]:
        """``batch`` minus the requests deferred behind a fork's lead."""
        store = self.store
        if not (store.enabled and store.prefix_cache):
            return batch
        if self._no_fork:
            self._no_fork = {s for s in self._no_fork if not s.done}
        queued = [
            s for s in batch if store.shares(s.job.prompt_cache_key) and s not in self._no_fork
        ]
        if not queued:
            return batch
        leads = [
            s for s in active if s.uid in self._leases and store.shares(s.job.prompt_cache_key)
        ]
        items = leads + queued
        if len(items) < 2:
            return batch
        prompts = [s.job.prompt_tokens for s in items]
        deferred: set[RequestState] = set()
        for f in plan_forks(prompts, store.tree_depth, self.fork_min_tokens):
            members = [items[i] for i in (f.lead, *f.followers)]
            running = [m for m in members if m.uid is not None]
            waiting = [m for m in members if m.uid is None]
            if running:
                lead, followers = max(running, key=self._kv), waiting
            else:
                lead, followers = waiting[0], waiting[1:]
            if not followers:
                continue
            fork = self._forks.setdefault(lead, _Fork())
            if not fork.followers:
                self.forks += 1
            fork.need = max(fork.need, f.length)
            fork.followers.extend(followers)
            deferred.update(followers)
        if not deferred:
            return batch
        self._recount()
        return [s for s in batch if s not in deferred]

    def leads(self, state: RequestState) -> bool:
        """True when deferred requests wait for ``state`` to prefill their shared prefix."""
        return state in self._forks

    def checkout(self, state: RequestState) -> Hit | None:
        """The cache a request starts from (None: cold)."""
        return self.store.checkout(state.job.prompt_tokens, state.job.prompt_cache_key)

    def register(self, state: RequestState, uid: int, hit: Hit | None) -> None:
        """The request was inserted as ``uid`` starting from ``hit``."""
        n = 0 if hit is None else hit.n
        state.cached_tokens = n
        self._no_fork.discard(state)
        if hit is not None:
            hit.cache = []  # the generator holds it until merged; then its arrays are freed
        if self.store.enabled:
            self._leases[uid] = _Lease(state, hit, n, n)

    def moved(self, old_uid: int, new_uid: int, *, kv: int) -> None:
        """A solo request entered the BatchGenerator as ``new_uid`` holding ``kv`` tokens."""
        lease = self._leases.pop(old_uid, None)
        if lease is not None:
            lease.kv = lease.base = kv
            self._leases[new_uid] = lease

    # ------------------------------------------------------------------ steps
    def after_step(self, batch: Batch, prompt_responses: Sequence[Any]) -> None:
        """Follow prefill progress; land every fork whose lead now holds its prefix."""
        leases = self._leases
        for r in prompt_responses:
            lease = leases.get(r.uid)
            if lease is not None:
                lease.kv = lease.base + int(r.progress[0])
        if self._forks:
            for lead in [s for s, f in self._forks.items() if self._kv(s) >= f.need]:
                self._land(batch, lead)

    def _kv(self, state: RequestState) -> int:
        lease = self._leases.get(state.uid) if state.uid is not None else None
        return -1 if lease is None else lease.kv

    def _land(self, batch: Batch, lead: RequestState) -> None:
        fork = self._forks.pop(lead)
        self._recount()
        stored = False
        uid = lead.uid
        assert uid is not None, "a fork's lead is running"
        got = batch.extract_cache([uid]).get(uid)
        if got is not None:
            cache, tokens = got
            prefix = lead.job.prompt_tokens[: fork.need]
            if len(tokens) >= fork.need and list(tokens[: fork.need]) == prefix:
                stored = self.store.add_prefix(prefix, cache)
        followers = [s for s in fork.followers if not s.done]
        if not stored:
            self._no_fork.update(followers)
        self._requeue(followers)

    def returned(self, uid: int, tokens: Sequence[int] | None, cache: Sequence[Any] | None) -> None:
        """A request's final cache came back (or None: it is lost); store it, release pins."""
        lease = self._leases.pop(uid, None)
        if lease is None:
            return
        self._unfork(lease.state)
        if tokens is None or not cache:
            self.store.release(lease.hit)
        else:
            self.store.checkin(lease.hit, lease.state.job.prompt_cache_key, tokens, cache)

    def dropped(self, state: RequestState) -> None:
        """A request left before finishing (cancelled, failed): mend the forks it was in,
        and give back a hit it took but never used (it failed before its insert)."""
        if state.uid is None and isinstance(state.cache, Hit):
            self.store.release(state.cache)
            state.cache = None
        self._no_fork.discard(state)
        self._unfork(state)
        for fork in self._forks.values():
            if state in fork.followers:
                fork.followers.remove(state)
        self._recount()

    def _unfork(self, lead: RequestState) -> None:
        fork = self._forks.pop(lead, None)
        if fork is not None:
            self._recount()
            self._requeue([s for s in fork.followers if not s.done])

    def fail_all(self) -> None:
        """The batch step failed and the generator is rebuilt: every lease is lost."""
        leases, self._leases = self._leases, {}
        for lease in leases.values():
            self.store.release(lease.hit)
        forks, self._forks = self._forks, {}
        self._recount()
        self._requeue([s for f in forks.values() for s in f.followers if not s.done])

    # ------------------------------------------------------------------ files
    def save(self, key: str, path: str | os.PathLike[str]) -> Path:
        """Write the cache stored under ``key`` to ``path`` (safetensors); the path written."""
        got = self.store.get_keyed(key)
        if got is None:
            why = (
                f" (prompt caching is off: {self.store.disabled_reason})"
                if not self.store.enabled
                else (" (or it is in use by a running request)")
            )
            raise InvalidRequestError(
                f"no prompt cache is stored under prompt_cache_key={key!r}{why}",
                field="prompt_cache_key",
                provider="mlx",
            )
        tokens, cache = got
        return save_cache_file(path, tokens, cache, self.model_id)

    def load(self, key: str, path: str | os.PathLike[str]) -> int:
        """Store the cache in ``path`` under ``key``; returns how many tokens it covers."""
        if not self.store.enabled:
            raise InvalidRequestError(
                f"prompt caching is off: {self.store.disabled_reason}",
                field="prompt_cache_key",
                provider="mlx",
            )
        tokens, cache = load_cache_file(path, self.model_id, self.num_layers)
        if not self.store.put_keyed(key, tokens, cache):
            raise InvalidRequestError(
                f"the prompt cache in {path} ({len(tokens)} tokens) does not fit "
                f"prompt_cache_bytes={self.store.budget}",
                field="path",
                provider="mlx",
            )
        return len(tokens)
