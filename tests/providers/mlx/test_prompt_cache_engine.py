"""Prompt caching inside the MLX engine, on the embedded model: greedy parity with cold runs,
wave forks, the byte budget under load, eviction vs running requests, key isolation, files,
and a model whose cache cannot be reused."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from abstractcore.errors import InvalidRequestError
from abstractcore.providers.mlx.prompt_cache_files import save_cache_file
from abstractcore.providers.mlx.token_prefix import common_prefix_length

MAX_TOKENS = 12
SYSTEM = (
    "You are the reference desk of a small public library. Answer in one short sentence, "
    "name a book when it helps, and never invent a title. "
)


@pytest.fixture(scope="module")
def llm(embedded_model_dir: Path) -> Iterator[Any]:
    """A provider with prompt caching on (a 256 MiB budget)."""
    from abstractcore.providers.mlx.provider import MLXProvider

    with MLXProvider(str(embedded_model_dir), prompt_cache_bytes=256 << 20) as p:
        yield p


@pytest.fixture(scope="module")
def small_llm(embedded_model_dir: Path) -> Iterator[Any]:
    """A provider with a budget of a few hundred tokens of KV, so eviction is constant."""
    from abstractcore.providers.mlx.provider import MLXProvider

    with MLXProvider(
        str(embedded_model_dir), prompt_cache_bytes=12 << 20, prefill_batch_size=32
    ) as p:
        yield p


class Pause:
    """Holds the engine thread between two steps, so requests submitted meanwhile arrive
    together; ``release`` lets it go (call it once everything is submitted)."""

    def __init__(self, engine: Any) -> None:
        started, self._release = threading.Event(), threading.Event()

        def hold(_: Any) -> None:
            started.set()
            self._release.wait(60)

        self._thread = threading.Thread(target=engine.call, args=(hold,))
        self._thread.start()
        assert started.wait(60)

    def release(self) -> None:
        self._release.set()
        self._thread.join()


async def submitted_together(engine: Any, coros: list[Any]) -> list[Any]:
    """Run ``coros`` as tasks that all reach the engine before it takes any of them."""
    pause = Pause(engine)
    try:
        tasks = [asyncio.ensure_future(c) for c in coros]
        await asyncio.sleep(0)  # one loop turn: every task submits before its first await
    finally:
        pause.release()
    return list(await asyncio.wait_for(asyncio.gather(*tasks), 120))  # fail, never hang


def greedy(llm: Any, reference: Any, messages: list[dict[str, str]], n: int = MAX_TOKENS) -> str:
    return str(reference.greedy(llm.tokenize(messages=messages), n))


def ask(llm: Any, messages: list[dict[str, str]], **kw: Any) -> Any:
    return llm.generate(messages=messages, max_output_tokens=MAX_TOKENS, temperature=0, **kw)


def cache_stats(llm: Any) -> dict[str, Any]:
    return dict(llm.stats()["prompt_cache"])


# ---------------------------------------------------------------------------------- keys
def test_multiturn_with_key_reuses_history_and_matches_cold(llm: Any, reference: Any) -> None:
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Who wrote Emma?"}]
    before = cache_stats(llm)
    first = ask(llm, msgs, prompt_cache_key="conv-1")
    assert first.content == greedy(llm, reference, msgs)
    assert first.usage.cached_tokens == 0
    for question in ("And who wrote Persuasion?", "Which of the two came first?"):
        prev_prompt = first.usage.prompt_tokens
        msgs += [
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": question},
        ]
        first = ask(llm, msgs, prompt_cache_key="conv-1")
        assert first.content == greedy(llm, reference, msgs)
        assert prev_prompt <= first.usage.cached_tokens < first.usage.prompt_tokens
    after = cache_stats(llm)
    assert after["hits"] - before["hits"] == 2 and after["misses"] - before["misses"] == 1
    assert after["tokens_saved"] > before["tokens_saved"]
    assert after["keyed_entries"] >= 1 and after["in_use"] == 0


def test_diverging_history_and_exact_repeat(llm: Any, reference: Any) -> None:
    turn1 = [{"role": "user", "content": "Name a novel about a whale."}]
    ask(llm, turn1, prompt_cache_key="div")
    # The client re-renders the assistant turn differently: reuse stops at the divergence.
    turn2 = turn1 + [
        {"role": "assistant", "content": "Moby-Dick, by Herman Melville, published in 1851."},
        {"role": "user", "content": "Who is its narrator?"},
    ]
    r = ask(llm, turn2, prompt_cache_key="div")
    assert r.content == greedy(llm, reference, turn2)
    n1 = len(llm.tokenize(messages=turn1))
    assert n1 - 3 <= r.usage.cached_tokens < r.usage.prompt_tokens - 10
    again = ask(llm, turn2, prompt_cache_key="div")  # exact repeat: all but one token
    assert again.content == r.content
    assert again.usage.cached_tokens == again.usage.prompt_tokens - 1


def test_keys_are_isolated(llm: Any, reference: Any) -> None:
    msgs = [{"role": "system", "content": SYSTEM + "Tenant A."}, {"role": "user", "content": "Hi"}]
    ask(llm, msgs, prompt_cache_key="tenant-a")
    other = ask(llm, msgs, prompt_cache_key="tenant-b")
    keyless = ask(llm, msgs)
    assert other.usage.cached_tokens == 0 and keyless.usage.cached_tokens == 0
    assert other.content == keyless.content == greedy(llm, reference, msgs)
    assert ask(llm, msgs, prompt_cache_key="tenant-a").usage.cached_tokens > 0


def test_same_key_concurrently_both_correct(llm: Any, reference: Any) -> None:
    msgs = [{"role": "user", "content": "Name two poets from Chile."}]
    ask(llm, msgs, prompt_cache_key="twin")
    follow = msgs + [
        {"role": "assistant", "content": "Pablo Neruda and Gabriela Mistral."},
        {"role": "user", "content": "Which one won a Nobel prize first?"},
    ]

    coros = [
        llm.agenerate(messages=follow, max_output_tokens=MAX_TOKENS, prompt_cache_key="twin")
        for _ in range(2)
    ]
    results = asyncio.run(submitted_together(llm.engine, coros))
    expected = greedy(llm, reference, follow)
    assert [r.content for r in results] == [expected, expected]
    assert sorted(r.usage.cached_tokens > 0 for r in results) == [False, True]  # one ran cold


# ---------------------------------------------------------------------------------- waves
def test_wave_without_key_prefills_the_shared_prompt_once(llm: Any, reference: Any) -> None:
    system = SYSTEM * 3 + "Wave test."
    questions = [
        "Who wrote Dracula?",
        "Name a poem by Keats.",
        "What is a sonnet?",
        "Who wrote Middlemarch?",
        "Recommend a book on rivers.",
        "Who wrote Ulysses?",
    ]
    wave = [
        [{"role": "system", "content": system}, {"role": "user", "content": q}] for q in questions
    ]
    prompts = [llm.tokenize(messages=m) for m in wave]
    shared = min(common_prefix_length(prompts[0], p) for p in prompts[1:])
    assert shared > 100
    before = llm.engine.counters.prefill_tokens
    forks = llm.engine.cache_scheduler.forks
    coros = [llm.agenerate(messages=m, max_output_tokens=MAX_TOKENS) for m in wave]
    results = asyncio.run(submitted_together(llm.engine, coros))
    prefilled = llm.engine.counters.prefill_tokens - before
    assert [r.content for r in results] == [reference.greedy(p, MAX_TOKENS) for p in prompts]
    assert llm.engine.cache_scheduler.forks == forks + 1
    assert sorted(r.usage.cached_tokens >= shared for r in results) == [False] + [True] * 5
    total = sum(len(p) for p in prompts)
    assert prefilled <= total - 5 * shared  # the shared part once, not 6 times


def test_wave_whose_prefix_exceeds_the_budget_runs_unforked(small_llm: Any, reference: Any) -> None:
    system = SYSTEM * 10  # ~330 tokens of KV: more than small_llm's whole budget
    wave = [
        [{"role": "system", "content": system}, {"role": "user", "content": q}]
        for q in ("Who wrote Dracula?", "Who wrote Emma?")
    ]
    coros = [small_llm.agenerate(messages=m, max_output_tokens=4) for m in wave]
    results = asyncio.run(submitted_together(small_llm.engine, coros))
    assert [r.content for r in results] == [greedy(small_llm, reference, m, 4) for m in wave]
    assert cache_stats(small_llm)["bytes"] <= cache_stats(small_llm)["budget"]


# ---------------------------------------------------------------------------------- budget
def test_budget_holds_under_200_requests_with_random_keys(small_llm: Any, reference: Any) -> None:
    rng = random.Random(7)
    budget = cache_stats(small_llm)["budget"]
    keys = [f"user-{i}" for i in range(24)] + [None] * 4
    checks: list[tuple[list[dict[str, str]], str]] = []

    async def one(i: int) -> None:
        key = rng.choice(keys)
        msgs = [
            {"role": "system", "content": "."},
            {"role": "user", "content": f"{rng.randrange(40)}"},
        ]
        r = await small_llm.agenerate(messages=msgs, max_output_tokens=1, prompt_cache_key=key)
        if i % 40 == 0:
            checks.append((msgs, r.content))

    async def run() -> None:
        for start in range(0, 200, 25):
            await asyncio.gather(*(one(i) for i in range(start, start + 25)))
            assert 0 < cache_stats(small_llm)["bytes"] <= budget

    before = cache_stats(small_llm)
    asyncio.run(run())
    s = cache_stats(small_llm)
    assert s["evictions"] > before["evictions"] and s["hits"] > before["hits"]
    assert s["hits"] + s["misses"] - before["hits"] - before["misses"] == 200
    assert s["in_use"] == 0 and s["bytes"] <= budget
    for msgs, content in checks:
        assert content == greedy(small_llm, reference, msgs, 1)


def test_eviction_never_touches_a_running_request(small_llm: Any, reference: Any) -> None:
    system = SYSTEM * 2 + "Eviction test."
    ask(small_llm, [{"role": "system", "content": system}, {"role": "user", "content": "Hi."}])
    long_q = [
        {"role": "system", "content": system},
        {"role": "user", "content": "List ten famous novels with their authors."},
    ]
    flood = [[{"role": "user", "content": f"Spell the word number {i}."}] for i in range(24)]
    seen: dict[str, Any] = {}

    def probe(engine: Any) -> None:
        sched = engine.cache_scheduler
        pinned = [lease.hit.node for lease in sched._leases.values() if lease.hit is not None]
        seen["pinned_attached"] = [n is not None and n in sched.store._nodes for n in pinned]
        seen["evictions"] = sched.store.evictions

    async def consume() -> Any:
        parts, final = [], None
        async for chunk in small_llm.astream(messages=long_q, max_output_tokens=24):
            if len(parts) == 10:  # the one-token flood has long finished by now
                await asyncio.to_thread(small_llm.engine.call, probe)
            parts.append(chunk.content)
            final = chunk
        return "".join(parts), final

    before = cache_stats(small_llm)["evictions"]
    coros = [consume()] + [small_llm.agenerate(messages=m, max_output_tokens=1) for m in flood]
    text, final = asyncio.run(submitted_together(small_llm.engine, coros))[0]
    assert final.usage.cached_tokens > 0 and final.finish_reason == "length"
    assert seen["evictions"] > before  # the flood forced evictions while it ran ...
    assert seen["pinned_attached"] and all(seen["pinned_attached"])  # ... never of its prefix
    assert text == greedy(small_llm, reference, long_q, 24)


# ---------------------------------------------------------------------------------- files
def test_save_and_load_round_trip(llm: Any, reference: Any, tmp_path: Path) -> None:
    msgs = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Who wrote Beloved?"},
    ]
    first = ask(llm, msgs, prompt_cache_key="saved")
    path = llm.save_prompt_cache("saved", tmp_path / "conv")
    assert Path(path).exists()
    llm.load_prompt_cache("restored", path)
    follow = msgs + [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": "Name another of her novels."},
    ]
    r = ask(llm, follow, prompt_cache_key="restored")
    assert r.usage.cached_tokens >= first.usage.prompt_tokens
    assert r.content == greedy(llm, reference, follow)
    with pytest.raises(InvalidRequestError) as err:
        llm.save_prompt_cache("never-used", tmp_path / "x")
    assert err.value.field == "prompt_cache_key"


def test_load_refuses_a_file_from_another_model(llm: Any, tmp_path: Path) -> None:
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache

    c = KVCache()
    c.keys = c.values = mx.zeros((1, 3, 4, 64))
    c.offset = 4
    foreign = save_cache_file(tmp_path / "foreign", [1, 2, 3, 4], [c] * 30, "org/other-model")
    with pytest.raises(InvalidRequestError) as err:
        llm.load_prompt_cache("k", foreign)
    msg = str(err.value)
    assert err.value.field == "path" and str(foreign) in msg and "org/other-model" in msg
    assert str(llm.model_path) in msg


# ---------------------------------------------------------------------------------- models
def test_model_whose_cache_cannot_be_merged_runs_without_reuse(
    embedded_model_dir: Path, reference: Any, tmp_path: Path
) -> None:
    """A sliding-window layer makes mlx-lm build a RotatingKVCache: caching turns itself off."""
    from abstractcore.providers.mlx.provider import MLXProvider

    model_dir = tmp_path / "sliding"
    model_dir.mkdir()
    for f in embedded_model_dir.iterdir():
        if f.name != "config.json":
            (model_dir / f.name).symlink_to(f)
    config = json.loads((embedded_model_dir / "config.json").read_text())
    layers = config["num_hidden_layers"]
    config["sliding_window"] = 4096  # wider than any prompt here: same output as full attention
    config["layer_types"] = ["sliding_attention"] + ["full_attention"] * (layers - 1)
    (model_dir / "config.json").write_text(json.dumps(config))
    msgs = [{"role": "user", "content": "Who wrote Emma?"}]
    with MLXProvider(str(model_dir)) as p:
        s = cache_stats(p)
        assert s["enabled"] is False and "RotatingKVCache" in s["reason"]
        outs = [ask(p, msgs, prompt_cache_key="k") for _ in range(2)]
        expected = greedy(p, reference, msgs)
    assert [o.usage.cached_tokens for o in outs] == [0, 0]
    assert outs[0].content == outs[1].content == expected
    shutil.rmtree(model_dir)
