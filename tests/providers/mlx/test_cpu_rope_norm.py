"""cpu_rope_norm.py: decode-step RoPE and RMSNorm, bit-identical to MLX's CPU fallbacks, and
the class swap that uses them on the engine's thread only."""

from __future__ import annotations

import shutil
import threading
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None, reason="MLX compiles for the CPU with g++"
)


@pytest.fixture(autouse=True)
def _mlx_with_blas() -> None:
    from abstractcore.providers.mlx.blas import preload_blas

    preload_blas()


def _offsets(kind: str, batch: int) -> Any:
    import mlx.core as mx

    if kind == "int":
        return 37
    if kind == "zero":
        return 0
    if kind == "scalar array":
        return mx.array(4095)
    return mx.array([3, 0, 100, 5000][:batch])  # BatchKVCache: one offset per row


@pytest.mark.parametrize("offset_kind", ["int", "zero", "scalar array", "per row"])
@pytest.mark.parametrize(("batch", "heads", "dim"), [(1, 9, 64), (4, 3, 64), (2, 2, 128)])
@pytest.mark.parametrize(("base", "scale"), [(100000.0, 1.0), (10000.0, 0.25)])
def test_rope_is_bit_identical_to_mlx(
    offset_kind: str, batch: int, heads: int, dim: int, base: float, scale: float
) -> None:
    import mlx.core as mx

    from abstractcore.providers.mlx import cpu_rope_norm

    mx.random.seed(batch * 10 + heads)
    x = mx.random.normal((batch, heads, 1, dim)) * 3.0
    offset = _offsets(offset_kind, batch)
    expected = mx.fast.rope(
        x, dim, traditional=False, base=base, scale=scale, offset=offset
    )  # fmt: skip
    got = cpu_rope_norm.rope(x, dim, base, scale, offset)
    assert got.shape == expected.shape
    assert mx.array_equal(got, expected).item()


def test_rope_tables_kept_for_an_int_offset_follow_the_offset() -> None:
    """The tables kept between calls belong to one offset: the next position gets its own."""
    import mlx.core as mx

    from abstractcore.providers.mlx import cpu_rope_norm

    x = mx.random.normal((2, 3, 1, 64))
    for offset in (5, 5, 6, 5, 1000):
        expected = mx.fast.rope(x, 64, traditional=False, base=1e4, scale=1.0, offset=offset)
        assert mx.array_equal(cpu_rope_norm.rope(x, 64, 1e4, 1.0, offset), expected).item()
    # same offset, other frequencies: not the kept tables either
    expected = mx.fast.rope(x, 64, traditional=False, base=5e5, scale=1.0, offset=1000)
    assert mx.array_equal(cpu_rope_norm.rope(x, 64, 5e5, 1.0, 1000), expected).item()


@pytest.mark.parametrize("shape", [(1, 1, 576), (32, 1, 576), (3, 1, 64), (2, 5, 576)])
def test_rms_norm_is_bit_identical_to_mlx(shape: tuple[int, ...]) -> None:
    import mlx.core as mx

    from abstractcore.providers.mlx import cpu_rope_norm

    mx.random.seed(shape[0])
    x = mx.random.normal(shape) * 4.0
    weight = mx.random.normal(shape[-1:])
    for eps in (1e-5, 1e-6):
        expected = mx.fast.rms_norm(x, weight, eps)
        assert mx.array_equal(cpu_rope_norm.rms_norm(x, weight, eps), expected).item()


def test_the_classes_take_the_fast_path_only_for_decode_inputs_on_an_enabled_thread(
    monkeypatch: Any,
) -> None:
    import mlx.core as mx
    import mlx.nn as nn

    from abstractcore.providers.mlx import cpu_ops, cpu_rope_norm

    calls: list[str] = []
    real_rope, real_norm = cpu_rope_norm.rope, cpu_rope_norm.rms_norm
    monkeypatch.setattr(cpu_rope_norm, "rope", lambda *a: calls.append("rope") or real_rope(*a))
    monkeypatch.setattr(
        cpu_rope_norm, "rms_norm", lambda *a: calls.append("rms_norm") or real_norm(*a)
    )  # fmt: skip

    class OwnFrequencies(nn.RoPE):  # a subclass with its own __call__ is left alone
        def __call__(self, x: Any, offset: Any = 0) -> Any:
            return super().__call__(x, offset=offset)

    model = nn.Sequential(nn.RMSNorm(64), nn.RoPE(64, base=1e4), OwnFrequencies(64))
    model.layers.append(nn.RoPE(64, traditional=True))
    assert cpu_rope_norm.install(model) == ["rms_norm", "rope"]
    assert cpu_rope_norm.install(model) == ["rms_norm", "rope"]  # again: nothing changes
    norm, rope, own, traditional = model.layers
    assert type(norm) is cpu_rope_norm.FastRMSNorm and type(rope) is cpu_rope_norm.FastRoPE
    assert type(own) is OwnFrequencies
    assert "weight" in norm.parameters()  # the parameter tree is the same

    decode = mx.random.normal((2, 4, 1, 64))
    prefill = mx.random.normal((2, 4, 3, 64))
    results: dict[str, list[Any]] = {}

    def run(name: str) -> None:
        results[name] = [
            rope(decode, offset=7),
            rope(decode, offset=mx.array([1, 9])),
            rope(prefill, offset=7),  # prefill: MLX's
            rope(decode.astype(mx.float16), offset=7),  # not float32: MLX's
            traditional(decode, offset=7),  # traditional rotation: MLX's
            norm(decode[:, 0]),
            norm(prefill[:, 0]),  # prefill: MLX's
        ]
        mx.eval(results[name])

    def on_enabled_thread() -> None:
        cpu_ops.enable_on_this_thread()
        run("fast")

    run("plain")  # this thread was never enabled
    assert calls == []
    worker = threading.Thread(target=on_enabled_thread)
    worker.start()
    worker.join()
    assert calls == ["rope", "rope", "rms_norm"]
    for fast, plain in zip(results["fast"], results["plain"], strict=True):
        assert mx.array_equal(fast, plain).item()
