"""The prompt-cache store on its own: trie, budget, move-in/out, files, and greedy parity of
cache hits through mlx-lm's BatchGenerator on the embedded model (main thread)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from abstractcore.errors import InvalidRequestError
from abstractcore.providers.mlx.prompt_cache import (
    Hit,
    PromptCacheStore,
    cache_support,
)
from abstractcore.providers.mlx.prompt_cache_files import load_cache_file, save_cache_file
from abstractcore.providers.mlx.token_prefix import Fork, common_prefix_length, plan_forks

LAYERS = 2
_TOKEN_BYTES = LAYERS * 2 * 1 * 2 * 4  # layers x (keys, values) x heads x dim x float32


def fake_cache(tokens: list[int]) -> list[Any]:
    """KV layers whose every position holds its own token id, so slices can be checked."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache

    col = mx.array(tokens, dtype=mx.float32).reshape(1, 1, len(tokens), 1)
    out = []
    for layer in range(LAYERS):
        c = KVCache()
        c.keys = mx.broadcast_to(col + layer, (1, 1, len(tokens), 2)) + mx.zeros((1, 1, 1, 2))
        c.values = c.keys * 2
        c.offset = len(tokens)
        out.append(c)
    return out


def copied(cache: list[Any]) -> list[Any]:
    """New KVCache objects over the same (immutable) arrays: what a second finish would hand in."""
    from mlx_lm.models.cache import KVCache

    out = []
    for c in cache:
        k = KVCache()
        k.keys, k.values, k.offset = c.keys, c.values, c.keys.shape[2]
        out.append(k)
    return out


def held_tokens(cache: list[Any]) -> list[int]:
    """The token ids a fake cache holds, read back through its first ``offset`` positions."""
    c = cache[0]
    return [int(x) for x in c.keys[0, 0, : c.offset, 0].tolist()]


# ---------------------------------------------------------------------------------- helpers
def test_common_prefix_length() -> None:
    assert common_prefix_length([1, 2, 3], [1, 2, 3]) == 3
    assert common_prefix_length([1, 2, 3], [1, 2]) == 2
    assert common_prefix_length([1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 9, 5, 6, 7]) == 3
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([5], [6]) == 0
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.randrange(3) for _ in range(rng.randrange(12))]
        b = [rng.randrange(3) for _ in range(rng.randrange(12))]
        naive = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        assert common_prefix_length(a, b) == naive


def test_cache_support_accepts_only_trimmable_mergeable_layers() -> None:
    from mlx_lm.models.cache import KVCache, QuantizedKVCache, RotatingKVCache

    assert cache_support([KVCache(), KVCache()]) is None
    assert "RotatingKVCache" in (cache_support([KVCache(), RotatingKVCache(16)]) or "")
    assert "QuantizedKVCache" in (cache_support([QuantizedKVCache()]) or "")
    assert cache_support([]) is not None


def test_plan_forks_groups_by_the_most_saving_prefix() -> None:
    sys_a, sys_b = list(range(100, 140)), list(range(200, 240))
    head = [1, 2, 3]
    prompts = [head + sys_a + [i, i + 1] for i in range(3)] + [
        head + sys_b + [7, i] for i in range(3)
    ]
    forks = plan_forks(prompts, covered=lambda p: 0, min_tokens=16)
    assert sorted(forks, key=lambda f: f.lead) == [Fork(0, (1, 2), 43), Fork(3, (4, 5), 44)]
    # Already cached: nothing to fork; below min_tokens: nothing either.
    assert plan_forks(prompts, covered=lambda p: len(p), min_tokens=16) == []
    assert plan_forks([head + [1], head + [2]], covered=lambda p: 0, min_tokens=16) == []
    # Identical prompts fork at len - 1 (a follower keeps one token to prefill).
    same = [list(range(50))] * 3
    assert plan_forks(same, covered=lambda p: 10, min_tokens=16) == [Fork(0, (1, 2), 49)]
    assert plan_forks([list(range(50))], covered=lambda p: 0) == []


# ---------------------------------------------------------------------------------- tree
def test_tree_stores_shared_prefix_once_and_reads_exact_kv() -> None:
    store = PromptCacheStore(1 << 30)
    system = list(range(1000, 1040))
    a, b, c = system + [1, 2, 3], system + [4, 5], system[:20] + [9]
    for seq in (a, b, c):
        store.checkin(None, None, seq, fake_cache(seq))
    # 40 shared + 3 + 2 tail tokens, then c splits the shared edge at 20 and adds 1.
    assert store.bytes == (40 + 3 + 2 + 1) * _TOKEN_BYTES
    assert store.stats()["entries"] == 3
    for seq in (a, b, c, system + [4, 6, 6], system[:30] + [0, 0]):
        hit = store.checkout(seq)
        assert hit is not None
        longest = max(common_prefix_length(seq, s) for s in (a, b, c))
        assert hit.n == min(longest, len(seq) - 1)
        assert held_tokens(hit.cache) == seq[: hit.n]
        assert hit.tokens == seq[: hit.n]
        store.release(hit)
    assert store.checkout([5, 5, 5]) is None
    s = store.stats()
    assert (s["hits"], s["misses"], s["in_use"]) == (5, 1, 0)


def test_keyed_entry_moves_out_and_back() -> None:
    store = PromptCacheStore(1 << 30)
    conv = list(range(60))
    store.checkin(None, "alice", conv, fake_cache(conv))
    assert store.stats()["keyed_entries"] == 1
    nxt = conv[:50] + [99, 98, 97]  # diverges mid-history
    hit = store.checkout(nxt, "alice")
    assert hit is not None and hit.n == 50 and held_tokens(hit.cache) == conv[:50]
    # Moved: no longer in the store (bytes freed), a second request with the key runs cold.
    assert store.bytes == 0 and store.stats()["keyed_entries"] == 0
    assert store.checkout(nxt, "alice") is None
    final = nxt + [1, 2]
    store.checkin(hit, "alice", final, fake_cache(final))
    assert store.stats()["keyed_entries"] == 1 and store.bytes == len(final) * _TOKEN_BYTES
    again = store.checkout(final, "alice")
    assert again is not None and again.n == len(final) - 1  # exact repeat keeps one token
    store.release(again)


def test_hits_hand_over_the_stored_arrays_without_copying() -> None:
    store = PromptCacheStore(1 << 30)
    seq = list(range(40))
    cache = fake_cache(seq)
    store.checkin(None, "k", seq, cache)
    hit = store.checkout(seq + [1], "k")
    assert hit is not None and hit.cache[0].keys is cache[0].keys  # moved, not copied
    store.checkin(None, None, seq, fake_cache(seq))
    node = next(iter(store._nodes))
    shared = store.checkout(seq + [1])
    assert shared is not None and shared.cache[0].keys is node.keys[0]  # read in place
    store.release(shared)
    store.release(hit)


def test_namespaces_do_not_cross_unless_shared() -> None:
    seq = list(range(80))
    for share in (False, True):
        store = PromptCacheStore(1 << 30, share_prefix_across_keys=share)
        store.checkin(None, None, seq, fake_cache(seq))
        store.checkin(None, "k1", seq, fake_cache(seq))
        assert store.checkout(seq, "k2") is None or share
        hit = store.checkout(seq, None)
        assert hit is not None  # keyless reads the shared tree, never k1's entry
        assert store.stats()["keyed_entries"] == 1
        store.release(hit)
    store = PromptCacheStore(1 << 30)
    store.checkin(None, "k1", seq, fake_cache(seq))
    assert store.checkout(seq, None) is None and store.checkout(seq, "k2") is None


def test_budget_is_lru_by_bytes_and_never_evicts_pinned_nodes() -> None:
    per = 100 * _TOKEN_BYTES
    store = PromptCacheStore(3 * per)
    seqs = [[i] * 100 for i in range(1, 6)]
    store.checkin(None, None, seqs[0], fake_cache(seqs[0]))
    pinned = store.checkout(seqs[0] + [7])  # a running request reads seqs[0]
    assert pinned is not None
    for seq in seqs[1:]:
        store.checkin(None, None, seq, fake_cache(seq))
        assert store.bytes <= store.budget
    assert store.tree_depth(seqs[0]) == 100  # pinned: kept although least recently used
    assert store.tree_depth(seqs[1]) == 0 and store.tree_depth(seqs[2]) == 0
    assert store.tree_depth(seqs[4]) == 100 and store.stats()["evictions"] == 2
    store.checkin(pinned, None, [], None)
    store.checkin(None, None, [9] * 100, fake_cache([9] * 100))
    assert store.tree_depth(seqs[0]) == 0  # released, now the oldest
    # An entry larger than the whole budget is not kept and evicts nothing.
    big = list(range(400))
    before = store.stats()["evictions"]
    store.checkin(None, "big", big, fake_cache(big))
    assert store.stats()["keyed_entries"] == 0 and store.stats()["evictions"] == before


def test_budget_holds_under_200_random_keys() -> None:
    rng = random.Random(5)
    store = PromptCacheStore(15 * 50 * _TOKEN_BYTES)
    keys = [f"user-{i}" for i in range(30)]
    for _ in range(200):
        key = rng.choice(keys + [None])  # type: ignore[list-item]
        seq = [rng.randrange(50) for _ in range(rng.randrange(5, 60))]
        hit = store.checkout(seq, key)
        if hit is not None:
            assert held_tokens(hit.cache) == seq[: hit.n]
        final = seq + [1, 2, 3]
        store.checkin(hit, key, final, fake_cache(final))
        assert 0 <= store.bytes <= store.budget
    s = store.stats()
    assert s["evictions"] > 0 and s["in_use"] == 0 and s["hits"] + s["misses"] == 200
    recount = sum(len(e.tokens) for e in store._keyed.values()) + sum(
        len(n.tokens) for n in store._nodes
    )
    assert store.bytes == recount * _TOKEN_BYTES
    store.clear()
    assert store.bytes == 0 and store.stats()["entries"] == 0


def test_disabled_store_reuses_nothing() -> None:
    for store in (PromptCacheStore(0), PromptCacheStore(1 << 20, disabled_reason="no merge")):
        seq = list(range(10))
        store.checkin(None, "k", seq, fake_cache(seq))
        assert store.checkout(seq, "k") is None and store.bytes == 0
        assert store.stats()["enabled"] is False and store.stats()["reason"]
    assert PromptCacheStore(0).stats()["reason"] == "prompt_cache_bytes=0"
    store = PromptCacheStore(1 << 20, prefix_cache=False)
    store.checkin(None, None, list(range(10)), fake_cache(list(range(10))))
    assert store.bytes == 0 and store.checkout(list(range(10))) is None


# ---------------------------------------------------------------------------------- files
def test_file_round_trip_and_refusals(tmp_path: Path) -> None:
    seq = list(range(3, 40))
    written = save_cache_file(tmp_path / "conv", seq, fake_cache(seq), "/models/a")
    assert written.name == "conv.safetensors"
    tokens, cache = load_cache_file(tmp_path / "conv", "/models/a", LAYERS)
    assert tokens == seq and held_tokens(cache) == seq
    with pytest.raises(InvalidRequestError) as err:
        load_cache_file(written, "/models/b", LAYERS)
    assert err.value.field == "path"
    assert str(written) in str(err.value) and "/models/a" in str(err.value)
    assert "/models/b" in str(err.value)
    with pytest.raises(InvalidRequestError, match="cache layout"):
        load_cache_file(written, "/models/a", LAYERS + 1)
    with pytest.raises(InvalidRequestError, match="cannot read"):
        load_cache_file(tmp_path / "missing.safetensors", "/models/a", LAYERS)
    import mlx.core as mx

    mx.save_safetensors(str(tmp_path / "other.safetensors"), {"x": mx.zeros(2)})
    with pytest.raises(InvalidRequestError):
        load_cache_file(tmp_path / "other.safetensors", "/models/a", LAYERS)


# ---------------------------------------------------------------------------------- parity
class Runner:
    """Greedy generation of one prompt through BatchGenerator, optionally on a cache hit."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.eos = [[t] for t in sorted(tokenizer.eos_token_ids)]

    def chat(self, *turns: str, system: str | None = None) -> list[int]:
        msgs = [{"role": "system", "content": system}] if system else []
        for i, text in enumerate(turns):
            msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
        return list(self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True))

    def run(self, prompt: list[int], hit: Hit | None = None, max_tokens: int = 12) -> Any:
        from mlx_lm.generate import BatchGenerator

        gen = BatchGenerator(self.model, stop_tokens=self.eos, prefill_step_size=512)
        try:
            n = 0 if hit is None else hit.n
            (uid,) = gen.insert(
                [prompt[n:]],
                max_tokens=[max_tokens],
                caches=None if hit is None else [hit.cache],
                all_tokens=None if hit is None else [hit.tokens],
            )
            out: list[int] = []
            while True:
                _, responses = gen.next()
                for r in responses:
                    assert r.uid == uid
                    out.append(r.token)
                    if r.finish_reason is not None:
                        return out, list(r.all_tokens), r.prompt_cache
        finally:
            gen.close()


@pytest.fixture(scope="module")
def runner(reference: Any) -> Runner:
    return Runner(reference.model, reference.tokenizer)


def test_cache_hits_give_the_cold_greedy_output(runner: Runner) -> None:
    store = PromptCacheStore(1 << 30)
    system = "You are a careful assistant who answers in one short sentence. " * 6
    # Multi-turn with a key: turn 2 reuses turn 1's prompt and answer.
    p1 = runner.chat("What is the capital of France?", system=system)
    out1, all1, cache1 = runner.run(p1)
    store.checkin(None, "conv", all1, cache1)
    answer = runner.tokenizer.decode([t for t in out1 if t not in runner.tokenizer.eos_token_ids])
    p2 = runner.chat("What is the capital of France?", answer, "And of Italy?", system=system)
    hit = store.checkout(p2, "conv")
    assert hit is not None and hit.n > len(p1)
    cold2 = runner.run(p2)[0]
    assert runner.run(p2, hit)[0] == cold2
    store.release(hit)
    # Diverging mid-history (a re-rendered assistant turn): reuse up to the divergence.
    p2b = runner.chat("What is the capital of France?", "Paris.", "And of Italy?", system=system)
    store.checkin(None, "conv", all1, copied(cache1))
    hit = store.checkout(p2b, "conv")
    assert hit is not None and len(p1) - 5 < hit.n < len(p2b) - 5
    assert runner.run(p2b, hit)[0] == runner.run(p2b)[0]
    store.release(hit)
    # Shared system prompt without a key (the tree), and an exact repeat.
    store.checkin(None, None, all1, copied(cache1))
    p3 = runner.chat("Name three colours.", system=system)
    hit = store.checkout(p3)
    assert hit is not None and hit.n >= len(runner.chat("x", system=system)) - 8
    out3, all3, cache3 = runner.run(p3, hit)
    assert out3 == runner.run(p3)[0]
    store.checkin(hit, None, all3, cache3)
    hit = store.checkout(p3)
    assert hit is not None and hit.n == len(p3) - 1
    assert runner.run(p3, hit)[0] == out3
    store.release(hit)
    assert store.stats()["in_use"] == 0
