"""compat.py's greedy step on the real embedded model: all-greedy steps skip the
log-probabilities and give mlx-lm's tokens; any other batch runs mlx-lm's own step."""

from __future__ import annotations

from typing import Any

from abstractcore.providers.mlx import compat


def _run(reference: Any, prompts: list[str], samplers: list[Any], *, install: bool) -> Any:
    """Every token and its logprobs' size, per request, from a fresh BatchGenerator."""
    from mlx_lm.generate import BatchGenerator

    tok = reference.tokenizer
    gen = BatchGenerator(
        reference.model,
        stop_tokens=[[t] for t in sorted(tok.eos_token_ids)],
        completion_batch_size=8,
        prefill_batch_size=8,
    )
    if install:
        assert compat.install_greedy_step(gen)
        assert type(gen._generation_batch).__name__ == "GreedyGenerationBatch"
    tokens = [tok.apply_chat_template([{"role": "user", "content": p}],
                                      add_generation_prompt=True) for p in prompts]  # fmt: skip
    uids = gen.insert(tokens, max_tokens=[12] * len(prompts), samplers=samplers)
    out: dict[int, list[tuple[int, int]]] = {u: [] for u in uids}
    done: set[int] = set()
    try:
        while len(done) < len(uids):
            _, responses = gen.next()
            for r in responses:
                out[r.uid].append((r.token, r.logprobs.size))
                if r.finish_reason is not None:
                    done.add(r.uid)
    finally:
        gen.close()
    return [out[u] for u in uids]


def _tokens(run: Any) -> list[list[int]]:
    return [[t for t, _ in seq] for seq in run]


def test_all_greedy_steps_skip_logprobs_and_keep_the_tokens(
    reference: Any, prompts: list[str]
) -> None:
    from mlx_lm.sample_utils import greedy_sampler

    samplers = [greedy_sampler] * len(prompts)
    plain = _run(reference, prompts, samplers, install=False)
    fast = _run(reference, prompts, samplers, install=True)
    assert _tokens(fast) == _tokens(plain)
    vocab = plain[0][0][1]
    assert vocab >= 49152
    for seq in fast:
        # The first token comes from the step that ends the prefill (mlx-lm's own).
        assert seq[0][1] == vocab and all(size == 0 for _, size in seq[1:]), seq


def test_a_sampling_row_makes_the_batch_run_mlx_lms_step(
    reference: Any, prompts: list[str]
) -> None:
    from mlx_lm.sample_utils import greedy_sampler

    from abstractcore.providers.mlx.sampling import SamplingParams, make_seeded_sampler

    params = SamplingParams(temperature=0.8, top_p=0.95)
    vocab = reference.model.args.vocab_size

    def samplers() -> list[Any]:  # a seeded sampler carries its key: a fresh one per run
        return [greedy_sampler] * 3 + [make_seeded_sampler(params, 7, vocab)]

    plain = _run(reference, prompts[:4], samplers(), install=False)
    fast = _run(reference, prompts[:4], samplers(), install=True)
    assert _tokens(fast) == _tokens(plain)
    sampled_steps = len(fast[3])  # the rows joined together: step i is entry i of each
    assert all(size > 0 for seq in fast for _, size in seq[:sampled_steps])
    # Once the sampling row is gone, the greedy rows take the shortcut again.
    assert all(size == 0 for seq in fast[:3] for _, size in seq[sampled_steps + 1 :])


def test_install_leaves_a_replaced_generation_batch_alone() -> None:
    class Other:
        pass

    class Generator:
        _generation_batch = Other()

    gen = Generator()
    assert not compat.install_greedy_step(gen)
    assert type(gen._generation_batch) is Other
