"""The KV prompt cache: keyed conversations and a shared token-trie prefix store, one byte budget.

Two layers share one budget (``budget_bytes``), evicted least-recently-used first:

- **Keyed entries** (``prompt_cache_key``): one full cache (prompt + answer) per key. A request
  with the key *moves* the entry out of the store (no copy is kept on both sides: once
  BatchGenerator merges it into its batch arrays the store's arrays are freed), and its final
  cache moves back in when it ends. While it is out, another request with that key runs cold.
- **Prefix tree** (requests without a key, or every request with
  ``share_prefix_across_keys``): a radix tree whose nodes each hold the KV of their own edge
  tokens, so N stored sequences sharing a 1,000-token system prompt hold it once. A hit reads
  node arrays (immutable) into fresh ``KVCache`` objects; the nodes it reads stay pinned until
  the request ends, and eviction only removes unpinned leaves.

Everything here runs on the engine thread (MLX arrays are thread-bound); ``stats()`` reads
plain ints and may be called from any thread. The writes into ``KVCache`` layers go through
compat.py (the engine's one boundary to mlx-lm's internals).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .compat import cut_layer, kv_layer, trim_layers
from .token_prefix import common_prefix_length

__all__ = [
    "Hit",
    "PromptCacheStore",
    "cache_support",
]


def cache_support(layers: Sequence[Any]) -> str | None:
    """None when these (fresh) cache layers can be reused; else why not.

    Reuse needs every layer to be trimmed to a prefix and merged into a batch: plain
    ``KVCache`` does both. Rotating caches lose tokens once they wrap, quantized and chunked
    caches have no ``merge``, recurrent state (``ArraysCache``) cannot be trimmed.
    """
    from mlx_lm.models.cache import KVCache

    if not layers:
        return "the model has no KV cache layers"
    for c in layers:
        if type(c) is not KVCache:
            return (
                f"the model's cache layers include {type(c).__name__}, which cannot be "
                "trimmed to a prefix and merged into a batch"
            )
    return None


# ---------------------------------------------------------------------------------- store
@dataclass(eq=False)
class _Entry:
    """A keyed conversation: its token ids and a full cache covering exactly those tokens."""

    tokens: list[int]
    cache: list[Any]
    nbytes: int
    last_used: int = 0


@dataclass(eq=False)
class _Node:
    """A radix-tree node: the KV of its own edge tokens (per layer, [1, H, len, D])."""

    tokens: list[int]
    keys: list[Any]
    values: list[Any]
    parent: _Node | None
    children: dict[int, _Node] = field(default_factory=dict)
    nbytes: int = 0
    pins: int = 0
    last_used: int = 0


@dataclass(eq=False)
class Hit:
    """A cache handed to one request: ``cache`` covers ``tokens`` (``n`` of them)."""

    key: str | None
    n: int
    tokens: list[int]
    cache: list[Any]
    node: _Node | None = None  # the deepest tree node read (pinned until release)
    released: bool = False


class PromptCacheStore:
    """Keyed entries plus a shared prefix tree under one LRU byte budget (engine thread only)."""

    def __init__(
        self,
        budget_bytes: int,
        *,
        prefix_cache: bool = True,
        share_prefix_across_keys: bool = False,
        disabled_reason: str | None = None,
    ) -> None:
        self.budget = max(0, int(budget_bytes))
        if disabled_reason is None and self.budget == 0:
            disabled_reason = "prompt_cache_bytes=0"
        self.disabled_reason = disabled_reason
        self.prefix_cache = prefix_cache
        self.share_across_keys = share_prefix_across_keys
        self._keyed: dict[str, _Entry] = {}
        self._root = _Node(tokens=[], keys=[], values=[], parent=None)
        self._nodes: set[_Node] = set()
        self._tick = 0
        # Counters read by stats() from any thread (plain ints).
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.tokens_saved = 0
        self.in_use = 0
        self._leaves = 0

    # ------------------------------------------------------------------ queries
    @property
    def enabled(self) -> bool:
        """True when requests may reuse cached prefixes."""
        return self.disabled_reason is None

    def shares(self, key: str | None) -> bool:
        """True when a request with ``key`` reads and feeds the shared prefix tree."""
        return self.enabled and self.prefix_cache and (key is None or self.share_across_keys)

    def tree_depth(self, tokens: Sequence[int]) -> int:
        """How many leading tokens of ``tokens`` the shared prefix tree holds."""
        return self._walk(tokens)[0] if self.enabled else 0

    # ------------------------------------------------------------------ request lifecycle
    def checkout(self, tokens: Sequence[int], key: str | None = None) -> Hit | None:
        """The longest reusable prefix for a request, moved (keyed) or pinned (tree) to it.

        At least one token is left to prefill. None on a miss. Every ``Hit`` must later go
        back through :meth:`checkin` or :meth:`release`.
        """
        if not self.enabled:
            return None
        cap = len(tokens) - 1
        keyed_n = 0
        entry = self._keyed.get(key) if key is not None else None
        if entry is not None:
            keyed_n = min(common_prefix_length(entry.tokens, tokens), cap)
        tree_n, path = 0, list[tuple[_Node, int]]()
        if self.shares(key):
            depth, path = self._walk(tokens)
            tree_n = min(depth, cap)
        if keyed_n <= 0 and tree_n <= 0:
            self.misses += 1
            return None
        self.hits += 1
        self.in_use += 1
        if keyed_n >= tree_n:
            assert entry is not None and key is not None
            del self._keyed[key]  # moved: the running request owns these arrays now
            self.bytes -= entry.nbytes
            trim_layers(entry.cache, keyed_n)
            self.tokens_saved += keyed_n
            return Hit(key, keyed_n, list(tokens[:keyed_n]), entry.cache)
        node = self._pin_path(path, tree_n)
        self.tokens_saved += tree_n
        return Hit(key, tree_n, list(tokens[:tree_n]), self._materialize(path, tree_n), node)

    def release(self, hit: Hit | None) -> None:
        """A request ended without handing back a cache: unpin what it read (a moved keyed
        entry is gone with it)."""
        if hit is None or hit.released:
            return
        hit.released = True
        self.in_use -= 1
        if hit.node is not None:
            hit.node.pins -= 1
            hit.node = None
        hit.cache = []

    def checkin(
        self, hit: Hit | None, key: str | None, tokens: Sequence[int], cache: Sequence[Any] | None
    ) -> None:
        """A request ended with its final cache (covering ``tokens``): keep it, then evict."""
        self.release(hit)
        if not self.enabled or not cache:
            return
        if cache[0].offset != len(tokens) or len(tokens) == 0:
            return  # never store a cache that does not match its tokens
        if key is not None:
            self._put_keyed(key, list(tokens), list(cache))
        elif self.prefix_cache:
            self._insert(tokens, cache)
        self._evict()

    def add_prefix(self, tokens: Sequence[int], cache: Sequence[Any]) -> bool:
        """Store a shared prefix (a wave's fork point) in the tree; False if it was not kept."""
        if not (self.enabled and self.prefix_cache) or not cache:
            return False
        if cache[0].offset < len(tokens) or not tokens:
            return False
        self._insert(tokens, cache)
        self._evict()
        return self._walk(tokens)[0] == len(tokens)

    # ------------------------------------------------------------------ keyed entries
    def get_keyed(self, key: str) -> tuple[list[int], list[Any]] | None:
        """The stored tokens and cache of ``key`` (not moved out); None if absent or in use."""
        entry = self._keyed.get(key)
        if entry is None:
            return None
        entry.last_used = self._next_tick()
        return list(entry.tokens), entry.cache

    def put_keyed(self, key: str, tokens: Sequence[int], cache: Sequence[Any]) -> bool:
        """Store ``cache`` (covering ``tokens``) under ``key``; False if it exceeds the budget."""
        if not self.enabled:
            return False
        self._put_keyed(key, list(tokens), list(cache))
        self._evict()
        return key in self._keyed

    def _put_keyed(self, key: str, tokens: list[int], cache: list[Any]) -> None:
        import mlx.core as mx

        n = len(tokens)
        for c in cache:  # drop what lies past the tokens (e.g. a trimmed view)
            cut_layer(c, n, mx.contiguous)
        mx.eval([(c.keys, c.values) for c in cache])  # detach from the batch's arrays
        nbytes = sum(c.keys.nbytes + c.values.nbytes for c in cache)
        old = self._keyed.pop(key, None)
        if old is not None:
            self.bytes -= old.nbytes
        if nbytes > self.budget:
            return
        self._keyed[key] = _Entry(tokens, cache, nbytes, self._next_tick())
        self.bytes += nbytes

    # ------------------------------------------------------------------ prefix tree
    def _walk(self, tokens: Sequence[int]) -> tuple[int, list[tuple[_Node, int]]]:
        """(matched depth, [(node, tokens of it used)]) along the tree for ``tokens``."""
        node, depth, path = self._root, 0, []
        n = len(tokens)
        while depth < n:
            child = node.children.get(tokens[depth])
            if child is None:
                break
            k = common_prefix_length(child.tokens, tokens[depth : depth + len(child.tokens)])
            path.append((child, k))
            depth += k
            if k < len(child.tokens):
                break
            node = child
        return depth, path

    def _pin_path(self, path: list[tuple[_Node, int]], n: int) -> _Node:
        tick = self._next_tick()
        used, last = 0, path[0][0]
        for node, k in path:
            if used >= n:
                break
            node.last_used = tick
            last = node
            used += k
        last.pins += 1  # its ancestors are interior nodes, never evicted while it exists
        return last

    def _materialize(self, path: list[tuple[_Node, int]], n: int) -> list[Any]:
        """Fresh KVCache objects over the first ``n`` tokens of ``path`` (lazy, no copy kept)."""
        import mlx.core as mx

        parts: list[tuple[_Node, int]] = []
        used = 0
        for node, k in path:
            take = min(k, n - used)
            if take <= 0:
                break
            parts.append((node, take))
            used += take
        out = []
        for layer in range(len(parts[0][0].keys)):
            ks, vs = [], []
            for node, take in parts:
                whole = take == len(node.tokens)
                ks.append(node.keys[layer] if whole else node.keys[layer][..., :take, :])
                vs.append(node.values[layer] if whole else node.values[layer][..., :take, :])
            keys = ks[0] if len(ks) == 1 else mx.concatenate(ks, axis=2)
            values = vs[0] if len(vs) == 1 else mx.concatenate(vs, axis=2)
            out.append(kv_layer(keys, values, n))
        return out

    def _insert(self, tokens: Sequence[int], cache: Sequence[Any]) -> None:
        """Add ``tokens`` to the tree; only the part not already stored is copied out of
        ``cache`` (which covers at least ``tokens``)."""
        import mlx.core as mx

        tick = self._next_tick()
        node, depth, n = self._root, 0, len(tokens)
        fresh: list[Any] = []
        while depth < n:
            child = node.children.get(tokens[depth])
            if child is None:
                keys = [mx.contiguous(c.keys[..., depth:n, :]) for c in cache]
                values = [mx.contiguous(c.values[..., depth:n, :]) for c in cache]
                leaf = _Node(list(tokens[depth:n]), keys, values, node, last_used=tick)
                fresh.append(leaf)
                self._attach(leaf)
                break
            k = common_prefix_length(child.tokens, tokens[depth : depth + len(child.tokens)])
            if k < len(child.tokens):
                child = self._split(child, k, fresh)
            child.last_used = tick
            node, depth = child, depth + k
        if fresh:
            mx.eval([(x.keys, x.values) for x in fresh])
            for x in fresh:
                x.nbytes = sum(a.nbytes for a in x.keys) + sum(a.nbytes for a in x.values)
                self.bytes += x.nbytes

    def _split(self, node: _Node, k: int, fresh: list[Any]) -> _Node:
        """Cut ``node``'s edge after ``k`` tokens; the new head is returned, ``node`` keeps
        the tail (so a pin on it still protects both)."""
        import mlx.core as mx

        parent = node.parent
        assert parent is not None
        head = _Node(
            node.tokens[:k],
            [mx.contiguous(a[..., :k, :]) for a in node.keys],
            [mx.contiguous(a[..., :k, :]) for a in node.values],
            parent,
            last_used=node.last_used,
        )
        self.bytes -= node.nbytes
        node.tokens = node.tokens[k:]
        node.keys = [mx.contiguous(a[..., k:, :]) for a in node.keys]
        node.values = [mx.contiguous(a[..., k:, :]) for a in node.values]
        node.nbytes = 0
        fresh.append(node)  # re-counted with the new arrays
        parent.children[head.tokens[0]] = head
        head.children[node.tokens[0]] = node
        node.parent = head
        self._nodes.add(head)
        fresh.append(head)
        return head

    def _attach(self, node: _Node) -> None:
        parent = node.parent
        assert parent is not None
        if not parent.children and parent is not self._root:
            self._leaves -= 1
        parent.children[node.tokens[0]] = node
        self._nodes.add(node)
        self._leaves += 1

    def _detach(self, node: _Node) -> None:
        parent = node.parent
        assert parent is not None and not node.children
        del parent.children[node.tokens[0]]
        self._nodes.discard(node)
        self._leaves -= 1
        if not parent.children and parent is not self._root:
            self._leaves += 1
        self.bytes -= node.nbytes
        node.keys, node.values, node.parent = [], [], None

    # ------------------------------------------------------------------ budget
    def _evict(self, limit: int | None = None, *, count: bool = True) -> None:
        """Drop least-recently-used keyed entries and unpinned tree leaves until the stored
        bytes are within ``limit`` (the budget by default)."""
        limit = self.budget if limit is None else limit
        while self.bytes > limit:
            victim: _Entry | _Node | None = None
            victim_key: str | None = None
            oldest = None
            for k, e in self._keyed.items():
                if oldest is None or e.last_used < oldest:
                    oldest, victim, victim_key = e.last_used, e, k
            for node in self._nodes:
                evictable = not node.children and node.pins == 0
                if evictable and (oldest is None or node.last_used < oldest):
                    oldest, victim, victim_key = node.last_used, node, None
            if victim is None:
                return  # everything left is in use by running requests
            self.evictions += count
            if isinstance(victim, _Node):
                self._detach(victim)
            else:
                assert victim_key is not None
                del self._keyed[victim_key]
                self.bytes -= victim.nbytes

    def clear(self) -> None:
        """Forget every stored entry (pinned tree nodes stay until their requests end)."""
        self._evict(-1, count=False)

    def _next_tick(self) -> int:
        self._tick += 1
        return self._tick

    def stats(self) -> dict[str, Any]:
        """Counters: enabled, reason, entries, bytes, budget, hits, misses, evictions,
        tokens_saved, in_use, keyed_entries, prefix_nodes (safe from any thread)."""
        keyed = len(self._keyed)
        return {
            "enabled": self.enabled,
            "reason": self.disabled_reason,
            "entries": keyed + self._leaves,
            "keyed_entries": keyed,
            "prefix_nodes": len(self._nodes),
            "bytes": self.bytes,
            "budget": self.budget,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "tokens_saved": self.tokens_saved,
            "in_use": self.in_use,
        }
