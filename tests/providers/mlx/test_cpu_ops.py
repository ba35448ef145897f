"""cpu_ops.py: the folded decode attention, the polynomial exp / SwiGLU, and the
thread-scoped dispatchers."""

from __future__ import annotations

import shutil
import threading
from typing import Any

import numpy as np
import pytest

from abstractcore.providers.mlx import blas_gemv, cpu_ops


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
#: ... and on a model with layers: its RMSNorm and RoPE (cpu_rope_norm.py), compiled too.
_INSTALLED_ON_A_MODEL = _INSTALLED + (["rms_norm", "rope"] if shutil.which("g++") else [])


# ---------------------------------------------------------------------- attention
# The folded products sum in another order than MLX's one product per head where the BLAS
# picks other kernels (8 query heads per key/value head; MKL by shape; blas_gemv.py's sgemv
# forwarding), and the polynomial exp of the softmax differs from MLX's ``exp`` by float32
# rounding: the outputs agree to rounding, not bit for bit.
@pytest.mark.parametrize(("batch", "heads", "kv_heads"), [(32, 9, 3), (5, 8, 8), (3, 8, 1)])
@pytest.mark.parametrize("mask_kind", ["none", "bool_rows", "bool_shared", "additive"])
def test_decode_attention_equals_mlx(batch: int, heads: int, kv_heads: int, mask_kind: str) -> None:
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
        assert mx.allclose(got, expected, rtol=1e-5, atol=1e-6).item()


def _prefill_masks(batch: int, length: int, total: int) -> dict[str, Any]:
    import mlx.core as mx
    from mlx_lm.models.base import create_causal_mask

    left_padding = mx.array([(3 * i) % (length + 1) for i in range(batch)])
    return {
        "none": None,
        "causal": "causal",
        "causal_array": create_causal_mask(length, total - length),  # (L, T)
        # BatchKVCache's left-padded prompts, (B, 1, L, T); the padding positions of a
        # prompt padded by `length` see no key at all.
        "left_padded": create_causal_mask(length, total - length, left_padding=left_padding),
        "additive": mx.broadcast_to(
            mx.where(mx.arange(total) % 5 == 0, -1e9, 0.0), (length, total)
        ),
    }


@pytest.mark.parametrize(
    ("batch", "heads", "kv_heads", "length", "total"),
    [
        (4, 9, 3, 17, 17),
        (2, 9, 3, 9, 40),
        (4, 9, 3, 17, 60),
        (1, 9, 3, 320, 320),
        (3, 8, 1, 6, 6),
        (2, 4, 4, 7, 30),
    ],  # (4, 9, 3, 17, 60): a cache offset with enough scores for the polynomial softmax
)
@pytest.mark.parametrize("mask_kind", ["none", "causal", "causal_array", "left_padded", "additive"])
def test_prefill_attention_equals_mlx(
    batch: int, heads: int, kv_heads: int, length: int, total: int, mask_kind: str
) -> None:
    import mlx.core as mx

    mx.random.seed(length * 7 + total)
    q = mx.random.normal((batch, heads, length, 64))
    k = mx.random.normal((batch, kv_heads, total, 64))
    v = mx.random.normal((batch, kv_heads, total, 32))  # value heads smaller than key heads
    mask = _prefill_masks(batch, length, total)[mask_kind]
    assert cpu_ops._prefill_mask(mask, length, total)
    expected = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, mask=mask)
    got = cpu_ops.prefill_attention(q, k, v, 0.125, mask)
    mx.eval(expected, got)
    assert got.shape == expected.shape == (batch, heads, length, 32)
    assert not mx.isnan(got).any().item()  # a fully masked padding row stays finite
    assert mx.allclose(got, expected, rtol=1e-5, atol=1e-5).item()


def test_only_prefill_masks_of_known_shapes_are_folded() -> None:
    import mlx.core as mx

    assert cpu_ops._prefill_mask(None, 4, 9) and cpu_ops._prefill_mask("causal", 4, 9)
    assert cpu_ops._prefill_mask(mx.ones((4, 9), dtype=mx.bool_), 4, 9)
    assert cpu_ops._prefill_mask(mx.ones((3, 1, 4, 9), dtype=mx.bool_), 4, 9)
    assert not cpu_ops._prefill_mask(mx.ones((3, 9, 4, 9)), 4, 9)  # per query head
    assert not cpu_ops._prefill_mask(mx.ones((1, 1, 1, 9)), 4, 9)  # broadcast over queries
    assert not cpu_ops._prefill_mask(mx.ones((3, 4, 9)), 4, 9)  # ambiguous rank 3
    assert not cpu_ops._prefill_mask("sliding", 4, 9)


def test_additive_masks_of_another_dtype_stay_on_mlx() -> None:
    import mlx.core as mx

    half = mx.zeros((2, 9, 4, 64), dtype=mx.float16)
    assert cpu_ops._mask_dtype_fits(None, half) and cpu_ops._mask_dtype_fits("causal", half)
    assert cpu_ops._mask_dtype_fits(mx.ones((4, 5), dtype=mx.bool_), half)
    assert cpu_ops._mask_dtype_fits(mx.zeros((4, 5), dtype=mx.float16), half)
    assert not cpu_ops._mask_dtype_fits(mx.zeros((4, 5), dtype=mx.float32), half)  # promotes


@pytest.mark.parametrize("shape", [(32, 3, 3, 37), (9, 256, 256), (2, 3, 3, 600, 512)])
def test_softmax_matches_mlx_in_one_block_and_in_many(shape: tuple[int, ...]) -> None:
    import mlx.core as mx

    mx.random.seed(len(shape))
    scores = mx.random.normal(shape) * 6
    scores = mx.where(mx.arange(shape[-1]) % 4 == 0, mx.finfo(mx.float32).min, scores)
    got = cpu_ops.softmax(scores)
    expected = mx.softmax(scores, axis=-1, precise=True)
    assert got.shape == scores.shape and got.dtype == mx.float32
    assert mx.allclose(got, expected, rtol=1e-6, atol=1e-7).item()
    assert (got[..., ::4] == 0).all().item()  # masked entries get exactly 0, as with MLX's exp
    half = scores.astype(mx.float16)  # other dtypes: MLX's own softmax
    assert mx.array_equal(cpu_ops.softmax(half), mx.softmax(half, axis=-1, precise=True)).item()


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


def test_softmax_first_traced_on_a_single_score_serves_longer_rows(monkeypatch: Any) -> None:
    # An engine's first decode step attends one cached token: a row of one score. The
    # compiled loop traced on it must give right answers (and not read past its rows) on the
    # longer rows of every later step.
    import mlx.core as mx

    monkeypatch.setattr(cpu_ops, "_compiled", {})
    monkeypatch.setattr(cpu_ops, "_SOFTMAX_MIN", 1)  # the polynomial also for few scores
    for length in (1, 37, 2):
        scores = mx.random.normal((4, 3, 3, length)) * 5
        got = cpu_ops.softmax(scores)
        assert mx.allclose(got, mx.softmax(scores, axis=-1, precise=True), atol=1e-7).item()


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


@pytest.mark.parametrize(
    "shape", [(32, 1, 1536), (3, 17, 1536), (5, 40), (8, 40, 1536), (2, 300, 512)]
)  # decode, prefill, prefill in blocks of rows
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
    real_prefill = cpu_ops.prefill_attention
    monkeypatch.setattr(
        cpu_ops, "decode_attention",
        lambda *a: calls.append("attention") or real_attention(*a),
    )  # fmt: skip
    monkeypatch.setattr(
        cpu_ops, "prefill_attention",
        lambda *a: calls.append("prefill attention") or real_prefill(*a),
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
    per_head = mx.ones((2, 9, 4, 5), dtype=mx.bool_)  # a mask per query head
    mx.eval(per_head, q, k, v, gate, prefill_q, prefill_gate, half)

    def run() -> None:
        sdpa(q, k, v, cache=None, scale=0.125, mask=None)
        llama.swiglu(gate, gate)
        sdpa(prefill_q, k, v, cache=None, scale=0.125, mask="causal")  # prefill: the fast one
        sdpa(prefill_q, k, v, cache=None, scale=0.125, mask=per_head)  # not folded: mlx-lm's
        sdpa(prefill_q, k[:, :, :3], v[:, :, :3], cache=None, scale=0.125, mask=None)  # L > T
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
    fast = ["attention", "swiglu", "prefill attention", "swiglu"]
    if "swiglu" not in _INSTALLED:
        fast = ["attention", "prefill attention"]
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
    assert mlx_llm.stats()["cpu_ops"] == _INSTALLED_ON_A_MODEL
    with MLXProvider(str(embedded_model_dir), fast_cpu_ops=False, pad_rows=False) as plain:
        assert plain.stats()["cpu_ops"] == []
        prompt = "List four animals that live in the sea."
        fast = mlx_llm.generate(prompt, max_output_tokens=24, temperature=0).content
        assert plain.generate(prompt, max_output_tokens=24, temperature=0).content == fast
