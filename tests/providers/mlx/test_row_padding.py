"""Row padding of the dense layers: the table, the layers, and greedy output on the real model."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from abstractcore.providers.mlx import row_padding
from abstractcore.providers.mlx.row_padding import RowPadding


@pytest.fixture(autouse=True)
def _tables_in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep this module's (partly faked) tables out of the user's cache."""
    real = row_padding._disk_path
    monkeypatch.setattr(row_padding, "_disk_path", lambda key: tmp_path / real(key).name)
    monkeypatch.delenv(row_padding.RECALIBRATE_ENV, raising=False)


@pytest.fixture(autouse=True)
def _mlx_with_blas() -> None:
    from abstractcore.providers.mlx.blas import preload_blas

    preload_blas()


def _tiny_model() -> Any:
    import mlx.core as mx
    from mlx import nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 24)
            self.up = nn.Linear(24, 40)
            self.down = nn.Linear(40, 24, bias=False)
            self.norm = nn.RMSNorm(24)

        def __call__(self, tokens: Any) -> Any:
            h = self.down(nn.silu(self.up(self.embed(tokens))))
            return self.embed.as_linear(self.norm(h))

    mx.random.seed(0)
    model = Tiny()
    mx.eval(model.parameters())
    return model


# ---------------------------------------------------------------------- the layers
def test_padded_layers_give_the_same_rows_and_keep_their_parameters() -> None:
    import mlx.core as mx
    from mlx import nn
    from mlx.utils import tree_flatten

    model = _tiny_model()
    tokens = mx.array([[3, 1, 4], [1, 5, 9], [2, 6, 5]])  # 9 rows through every layer
    before = model(tokens)
    params = dict(tree_flatten(model.parameters()))
    everything_to_16 = RowPadding([0, 1, *([16] * 15)])
    assert row_padding.apply(model, everything_to_16) == 3  # embed (as_linear), up, down
    after = model(tokens)
    assert after.shape == before.shape == (3, 3, 50)
    assert mx.allclose(after, before, atol=1e-5).item()
    assert dict(tree_flatten(model.parameters())).keys() == params.keys()
    assert all(a is params[k] for k, a in tree_flatten(model.parameters()))
    assert isinstance(model.up, nn.Linear) and type(model.up) is not nn.Linear
    assert isinstance(model.embed, nn.Embedding)
    # Applying again swaps the table, never wraps twice; remove() restores the classes.
    assert row_padding.apply(model, RowPadding([0, 1])) == 3
    assert type(model.up).__mro__[2] is nn.Linear
    assert mx.allclose(model(tokens), before, atol=1e-5).item()
    assert row_padding.remove(model) == 3
    assert type(model.up) is nn.Linear and type(model.embed) is nn.Embedding
    assert mx.allclose(model(tokens), before, atol=1e-5).item()


def test_run_pads_only_the_row_counts_of_the_table() -> None:
    import mlx.core as mx

    table = RowPadding([0, 1, 8, 8, 4, 5, 8, 8, 8])
    w = mx.random.normal((7, 5))
    seen: list[int] = []

    def product(x: Any) -> Any:
        seen.append(x.shape[0] if x.ndim == 2 else -1)
        return x @ w.T

    for shape in [(3, 5), (1, 3, 5), (4, 5), (9, 5), (2, 1, 5)]:
        x = mx.random.normal(shape)
        out = table.run(x, product)
        assert out.shape == (*shape[:-1], 7)
        assert mx.allclose(out, x @ w.T, atol=1e-5).item()
    # 3 rows -> 8; (1, 3) -> 3 rows -> 8; 4 stays; 9 is past the table; (2, 1) -> 2 -> 8
    assert seen == [8, 8, 4, 9, 8]
    assert table.padded() == {2: 8, 3: 8, 6: 8, 7: 8}


# ---------------------------------------------------------------------- the calibration
def _fake_timing(
    monkeypatch: pytest.MonkeyPatch, per_row: dict[int, float], pad_cost: float
) -> None:
    """Products cost ``per_row[rows]`` (default: ``rows``) plus ``pad_cost`` when padded."""

    def fake(w: Any, rows: int, padded_to: int, count: int) -> float:
        base = per_row.get(padded_to, float(padded_to))
        return base + (pad_cost if padded_to != rows else 0.0)

    monkeypatch.setattr(row_padding, "_time_product", fake)
    monkeypatch.setattr(row_padding, "_cache", {})


def test_calibration_pads_to_clearly_cheaper_counts_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # 16 and 32 rows are cheap; 12 and 13 look a little dearer than 16 (not worth it), 1 is
    # never padded, and padding itself costs 0.2 per product.
    cheap = {16: 6.0, 32: 10.0, 2: 1.5, 12: 6.2, 13: 6.25}
    _fake_timing(monkeypatch, cheap, pad_cost=0.2)
    table = row_padding.calibrate(_tiny_model(), 32)
    assert table.max_rows == 32
    padded = table.padded()
    assert 1 not in padded  # a lone row keeps mlx_lm.generate's exact computation
    assert all(padded[m] == 16 for m in (7, 8, 9, 10, 11, 14, 15))
    assert 12 not in padded and 13 not in padded and 16 not in padded
    assert all(padded[m] == 32 for m in range(17, 32))
    assert all(p > m for m, p in padded.items())
    # A smaller max_batch_size reuses the same measurements, cut to its size.
    assert row_padding.calibrate(_tiny_model(), 8).pad_to == table.pad_to[:9]


def test_calibration_stops_at_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_timing(monkeypatch, {16: 1.0}, pad_cost=0.0)
    clock = iter(range(1000))
    monkeypatch.setattr(row_padding.time, "perf_counter", lambda: float(next(clock)))
    table = row_padding.calibrate(_tiny_model(), 32, budget_s=5)
    assert table.max_rows < 16  # 16 was never reached: nothing pads to it
    assert table.padded() == {}


# ---------------------------------------------------------------------- the real model
def test_a_measured_table_is_kept_on_disk_and_read_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _fake_timing(monkeypatch, {16: 6.0, 32: 10.0}, pad_cost=0.0)
    first = row_padding.calibrate(_tiny_model(), 32)
    (kept,) = tmp_path.glob("*.json")
    data = json.loads(kept.read_text())
    assert data["pad_to"] == list(first.pad_to) and data["key"]["limit"] == 32
    assert data["key"]["cores"] and data["key"]["blas"] and data["key"]["products"]

    def no_measuring(*args: Any) -> Any:
        raise AssertionError("measured again although a table was kept")

    monkeypatch.setattr(row_padding, "_cache", {})  # a new process
    monkeypatch.setattr(row_padding, "_calibrate", no_measuring)
    assert row_padding.calibrate(_tiny_model(), 32).pad_to == first.pad_to
    assert row_padding.calibrate(_tiny_model(), 8).pad_to == first.pad_to[:9]  # same table


def test_a_kept_table_that_does_not_hold_up_is_measured_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _fake_timing(monkeypatch, {16: 6.0, 32: 10.0}, pad_cost=0.0)
    good = row_padding.calibrate(_tiny_model(), 32).pad_to
    (kept,) = tmp_path.glob("*.json")
    data = json.loads(kept.read_text())
    broken = [
        "{not json",
        json.dumps({**data, "pad_to": [0, 1, 1]}),  # pads 2 rows down to 1
        json.dumps({**data, "pad_to": [0, 1, 99]}),  # past the table
        json.dumps({**data, "key": {**data["key"], "cpu": "another CPU"}}),
    ]
    for text in broken:
        kept.write_text(text)
        monkeypatch.setattr(row_padding, "_cache", {})
        assert row_padding.calibrate(_tiny_model(), 32).pad_to == good
        assert json.loads(kept.read_text())["pad_to"] == list(good)  # replaced


def test_recalibrate_env_measures_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_timing(monkeypatch, {16: 6.0, 32: 10.0}, pad_cost=0.0)
    row_padding.calibrate(_tiny_model(), 32)
    _fake_timing(monkeypatch, {}, pad_cost=0.0)  # now every count costs its rows: no padding
    assert row_padding.calibrate(_tiny_model(), 32).padded() != {}  # the kept table
    monkeypatch.setattr(row_padding, "_cache", {})
    monkeypatch.setenv(row_padding.RECALIBRATE_ENV, "1")
    assert row_padding.calibrate(_tiny_model(), 32).padded() == {}
    (kept,) = tmp_path.glob("*.json")
    assert json.loads(kept.read_text())["pad_to"] == list(range(33))


@pytest.mark.mlx
@pytest.mark.anyio
async def test_greedy_batches_of_every_size_are_unchanged_by_padding(
    mlx_llm: Any, reference: Any, prompts: list[str]
) -> None:
    """Whatever this machine's calibration chose, force padding at every batch size and
    check the batched greedy output against mlx-lm one by one."""

    def use(table: RowPadding | None) -> Any:
        def swap(engine: Any) -> RowPadding | None:
            padding = engine.core.setup.padding
            old = padding.table
            padding.use(False)  # the next batch step applies ``table``
            padding.table = table
            return old

        return swap

    old = mlx_llm.engine.call(use(RowPadding([0, 1, *([32] * 31)])))
    try:
        texts = [*prompts, *(p + " Answer briefly." for p in prompts[:3])]  # 11 rows
        results = await asyncio.gather(*(mlx_llm.agenerate(t, max_output_tokens=12) for t in texts))
        for text, r in zip(texts, results):
            assert r.content == reference.greedy(mlx_llm.tokenize(text), 12)
        padded = await asyncio.to_thread(mlx_llm.engine.call, lambda e: e.core.setup.padding.on)
        assert padded
    finally:
        mlx_llm.engine.call(use(old))


@pytest.mark.mlx
def test_the_engine_reports_its_row_padding(mlx_llm: Any) -> None:
    padded = mlx_llm.stats()["row_padding"]
    assert isinstance(padded, dict)
    assert all(1 < m < p <= mlx_llm.engine.options.max_batch_size + 15 for m, p in padded.items())
