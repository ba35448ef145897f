"""cpu_ops.py: the folded decode attention, the polynomial exp / SwiGLU, and the
thread-scoped dispatchers."""

from __future__ import annotations

import shutil
import threading
from typing import Any

import numpy as np
import pytest

from abstractcore.providers.mlx import blas_gemv, cpu_ops
from abstractcore.providers.mlx.blas import blas_info


@pytest.fixture(autouse=True)
def _mlx_with_blas() -> None:
    from abstractcore.providers.mlx.blas import preload_blas

    preload_blas()


def _qkv(batch: int, heads: int, kv_heads: int, length: int, dim: int = 64) -> tuple[Any, ...]:
    import mlx.core as mx

    mx.random.seed(batch * 100 + heads * 10 + kv_heads)
    q = mx.random.normal((batch, heads, 1, dim))
    k = mx.random.normal((batch, kv_heads, length, dim))
    v = mx.random.normal((batch, kv_heads, length, dim))
    return q, k, v


#: What install() replaces here: SwiGLU only where MLX can compile for the CPU.
_INSTALLED = ["scaled_dot_product_attention"] + (["swiglu"] if shutil.which("g++") else [])


# ---------------------------------------------------------------------- attention
# SmolLM2's 9 query heads per 3 key/value heads come out bit for bit on sgemm; with 8 query
# heads per key/value head the BLAS sums the 8-row product in another order (float32
# rounding). MLX's own kernel makes one-row products, which blas_gemv.py forwards to sgemv,
# another summation order: bit for bit holds with the forwarding off, rounding with it on.
# MKL picks its kernels by shape, so under it the two agree to float32 rounding only.
@pytest.mark.parametrize(
    ("batch", "heads", "kv_heads", "exact"), [(32, 9, 3, True), (5, 8, 8, True), (3, 8, 1, False)]
)
@pytest.mark.parametrize("mask_kind", ["none", "bool_rows", "bool_shared", "additive"])
def test_decode_attention_equals_mlx(
    batch: int, heads: int, kv_heads: int, exact: bool, mask_kind: str
) -> None:
    import mlx.core as mx

    length = 37
    q, k, v = _qkv(batch, heads, kv_heads, length)
    left_padding = mx.arange(batch) % 7  # what BatchKVCache's decode mask looks like
    mask: Any = {
        "none": None,
        "bool_rows": left_padding[:, None, None, None] <= mx.arange(length),  # (B, 1, 1, L)
        "bool_shared": mx.arange(length)[None] >= 3,  # (1, L)
        "additive": mx.where(mx.arange(length) % 5 == 0, -1e9, 0.0)[None, None, None],
    }[mask_kind]
    for forwarding in (False, True):
        blas_gemv.set_forwarding(forwarding)
        try:
            expected = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, mask=mask)
            got = cpu_ops.decode_attention(q, k, v, 0.125, mask)
            mx.eval(expected, got)
        finally:
            blas_gemv.set_forwarding(True)
        assert got.shape == expected.shape == (batch, heads, 1, 64)
        if exact and not forwarding and blas_info()["kind"] == "openblas":
            assert mx.array_equal(got, expected).item()
        else:
            assert mx.allclose(got, expected, rtol=1e-5, atol=1e-6).item()


def test_decode_attention_keeps_the_value_head_size() -> None:
    import mlx.core as mx

    q, k, _ = _qkv(4, 6, 2, 11)
    v = mx.random.normal((4, 2, 11, 32))  # value heads smaller than query/key heads
    expected = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, mask=None)
    got = cpu_ops.decode_attention(q, k, v, 0.125, None)
    assert got.shape == expected.shape == (4, 6, 1, 32)
    assert mx.allclose(got, expected, rtol=1e-5, atol=1e-6).item()


def test_only_decode_shaped_masks_are_folded() -> None:
    import mlx.core as mx

    assert cpu_ops._decode_mask(None, 4)
    assert cpu_ops._decode_mask(mx.ones((4, 1, 1, 9), dtype=mx.bool_), 4)
    assert cpu_ops._decode_mask(mx.ones((1, 9)), 4)
    assert not cpu_ops._decode_mask("causal", 4)
    assert not cpu_ops._decode_mask(mx.ones((4, 9, 1, 9)), 4)  # per query head
    assert not cpu_ops._decode_mask(mx.ones((4, 1, 9)), 4)  # ambiguous rank 3


# ---------------------------------------------------------------------- exp and SwiGLU
def test_polynomial_exp_is_within_two_ulp_over_the_float32_range() -> None:
    import mlx.core as mx

    x = np.linspace(-87.0, 88.0, 1_000_003).astype(np.float32)
    got = np.array(cpu_ops._exp(mx.array(x))).astype(np.float64)
    exact = np.exp(x.astype(np.float64))
    assert np.all(np.isfinite(got))
    assert (np.abs(got - exact) / exact).max() < 2.4e-7  # 2 float32 ulp


def test_polynomial_exp_saturates_instead_of_overflowing() -> None:
    import mlx.core as mx

    got = np.array(cpu_ops._exp(mx.array([-1e4, -100.0, 100.0, 1e4], dtype=mx.float32)))
    assert np.all(np.isfinite(got)) and np.all(got > 0)
    assert got[0] == got[1] < 1e-37 and got[2] == got[3] > 1e38


@pytest.mark.parametrize("shape", [(32, 1, 1536), (3, 17, 1536), (5, 40)])  # decode, prefill
def test_swiglu_matches_silu_times_x(shape: tuple[int, ...]) -> None:
    import mlx.core as mx

    rng = np.random.default_rng(0)
    gate = (rng.standard_normal(shape) * 8).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    gate.reshape(-1)[:4] = [-100.0, 100.0, 0.0, -0.0]
    got = np.array(cpu_ops.swiglu(mx.array(gate), mx.array(x))).astype(np.float64)
    g = gate.astype(np.float64)
    exact = g / (1.0 + np.exp(-g)) * x
    assert np.all(np.isfinite(got))
    scale = np.maximum(np.abs(exact), 1e-30)
    assert (np.abs(got - exact) / scale).max() < 1e-6


# ---------------------------------------------------------------------- dispatch
def test_dispatchers_take_the_fast_path_only_on_an_enabled_thread(monkeypatch: Any) -> None:
    import mlx.core as mx
    from mlx_lm.models import activations, base, llama

    calls: list[str] = []
    monkeypatch.setattr(llama, "scaled_dot_product_attention", base.scaled_dot_product_attention)
    monkeypatch.setattr(llama, "swiglu", activations.swiglu)
    real_attention, real_swiglu = cpu_ops.decode_attention, cpu_ops.swiglu
    monkeypatch.setattr(
        cpu_ops, "decode_attention",
        lambda *a: calls.append("attention") or real_attention(*a),
    )  # fmt: skip
    monkeypatch.setattr(cpu_ops, "swiglu", lambda *a: calls.append("swiglu") or real_swiglu(*a))

    model = llama.Model.__new__(llama.Model)  # install() only reads the class's module
    assert cpu_ops.install(model)[0] == _INSTALLED
    assert cpu_ops.install(model)[0] == _INSTALLED
    sdpa = llama.scaled_dot_product_attention
    assert sdpa.__wrapped__ is base.scaled_dot_product_attention  # not wrapped twice

    q, k, v = _qkv(2, 9, 3, 5)
    gate = mx.ones((2, 1, 16))
    prefill_q = mx.random.normal((2, 9, 4, 64))
    prefill_gate = mx.ones((2, 4, 16))
    half = mx.ones((2, 4, 16), dtype=mx.float16)
    mx.eval(q, k, v, gate, prefill_q, prefill_gate, half)

    def run() -> None:
        sdpa(q, k, v, cache=None, scale=0.125, mask=None)
        llama.swiglu(gate, gate)
        sdpa(prefill_q, k, v, cache=None, scale=0.125, mask="causal")  # prefill: mlx-lm's
        llama.swiglu(prefill_gate, prefill_gate)  # prefill SwiGLU: the fast one too
        llama.swiglu(half, half)  # not float32: mlx-lm's

    def on_enabled_thread() -> None:
        cpu_ops.enable_on_this_thread()
        run()

    run()  # this thread was never enabled
    assert calls == []
    worker = threading.Thread(target=on_enabled_thread)
    worker.start()
    worker.join()
    fast = ["attention", "swiglu", "swiglu"] if "swiglu" in _INSTALLED else ["attention"]
    assert calls == fast
    run()  # enabling another thread did not enable this one
    assert calls == fast


def test_the_engine_reports_and_can_switch_off_its_cpu_ops(
    mlx_llm: Any, embedded_model_dir: Any
) -> None:
    import mlx.core as mx

    from abstractcore.providers.mlx.provider import MLXProvider

    if mx.default_device() != mx.cpu:
        pytest.skip("cpu_ops apply on the CPU only")
    assert mlx_llm.stats()["cpu_ops"] == _INSTALLED
    with MLXProvider(str(embedded_model_dir), fast_cpu_ops=False, pad_rows=False) as plain:
        assert plain.stats()["cpu_ops"] == []
        prompt = "List four animals that live in the sea."
        fast = mlx_llm.generate(prompt, max_output_tokens=24, temperature=0).content
        assert plain.generate(prompt, max_output_tokens=24, temperature=0).content == fast
