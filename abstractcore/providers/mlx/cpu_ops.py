"""Faster CPU formulations of two model operations: attention and SwiGLU.

Measured on this project's 2-core machine (float32, OpenBLAS), a 32-row decode step of
SmolLM2-135M spent about 65 ms in attention and 32 ms in SwiGLU out of ~350 ms:

- **Attention (decode and prefill).** MLX's CPU ``scaled_dot_product_attention`` makes one
  small matrix product per (row, query head). :func:`decode_attention` (one query token per
  row) and :func:`prefill_attention` (a chunk of prompt tokens: causal, windowed or
  left-padded masks) fold the query heads that share a key/value head into the rows of one
  product (grouped-query attention), a third as many BLAS calls for SmolLM2's 9 query / 3
  key-value heads. Their softmax (:func:`softmax`) uses the polynomial ``exp`` below: in
  MLX's fallback the ``exp`` of the scores is most of attention's time (a 256-token
  prefill: ~7 of 8 ms per layer).
  Both agree with MLX's kernel to float32 rounding (tested for decode and prefill masks).
- **SwiGLU (decode and prefill).** MLX's CPU ``exp`` runs at ~11-15 ns per element here (a
  multiply at ~0.4 ns), so the sigmoid dominates. :func:`swiglu` computes ``exp`` as a
  Cody-Waite range reduction and a degree-5 polynomial (Cephes' ``expf``) in compiled
  loops: 3-4x faster, and closer to the exact value than MLX's own ``exp`` (max relative
  error 8e-8 against 3.8e-6; ``tests/providers/mlx/test_cpu_ops.py``).

(RoPE and RMSNorm, MLX's CPU fallbacks for which cost a decode step more in dispatch than in
arithmetic, are cpu_rope_norm.py's; :func:`install` puts them in place too.)

The model code calls these through module globals (``scaled_dot_product_attention`` and
``swiglu`` in e.g. ``mlx_lm.models.llama``), so :func:`install` has compat.py put a dispatcher
there, in every module the model's layers come from, that uses the fast version only on a
thread that called :func:`enable_on_this_thread` (the engine's) and mlx-lm's own everywhere
else: another model in the same process, such as the benchmark's ``mlx_lm.generate``
baseline, runs unchanged.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

from .cpu_switch import enable_on_this_thread
from .cpu_switch import enabled_here as _fast_here

__all__ = [
    "decode_attention", "enable_on_this_thread", "install", "prefill_attention", "softmax",
    "swiglu",
]  # fmt: skip

# Cephes expf: exp(x) = 2**n * exp(r), x = n*ln2 + r, |r| <= ln2/2; ln2 split in two so that
# n*ln2 is exact enough.
_LOG2E = 1.44269504088896341
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
             1.6666665459e-1, 5.0000001201e-1)  # fmt: skip


def _exp_parts(x: Any) -> tuple[Any, Any]:
    """``exp(x) = p * 2**e`` in float32 from multiplies and adds (which the CPU backend
    vectorizes): ``p`` and the biased exponent bits ``e + 127``."""
    import mlx.core as mx

    x = mx.clip(x, -87.0, 88.0)  # 2**n stays a normal float32
    n = mx.floor(x * _LOG2E + 0.5)
    r = x - n * _LN2_HI - n * _LN2_LO
    p = _EXP_POLY[0] * r + _EXP_POLY[1]
    for c in _EXP_POLY[2:]:
        p = p * r + c
    return p * (r * r) + r + 1.0, n.astype(mx.int32) + 127


def _power_of_two(biased: Any) -> Any:
    import mlx.core as mx

    return (biased << 23).view(mx.float32)  # the float32 whose exponent field is ``biased``


def _exp(x: Any) -> Any:
    p, biased = _exp_parts(x)
    return p * _power_of_two(biased)


def _fused_swiglu(gate: Any, x: Any) -> Any:
    return gate / (1.0 + _exp(-gate)) * x  # silu(gate) * x


def _neg_exp_parts(gate: Any) -> tuple[Any, Any]:
    return _exp_parts(-gate)


def _swiglu_from_parts(gate: Any, x: Any, p: Any, two_n: Any) -> Any:
    return gate / (1.0 + p * two_n) * x


_compiled: dict[str, Callable[..., Any]] = {}


def _compile(name: str, fn: Callable[..., Any], **kwargs: Any) -> Callable[..., Any]:
    if name not in _compiled:
        import mlx.core as mx

        _compiled[name] = mx.compile(fn, **kwargs)
    return _compiled[name]


#: Elements per call of the polynomial loops. They run at ~4-6 ns per element while their
#: arrays fit in a core's L2 (2 MB here) and at 12-17 ns beyond it (slower than MLX's own
#: ``exp``), so larger inputs go through in blocks of rows of about this many elements:
#: 2**17 measured best here among 2**14..2**18 (SwiGLU of 32 x 40 x 1536: 36.6 ms whole,
#: 22.6 in blocks of 2**18, 11.9 in blocks of 2**17; mlx-lm's 29.6).
_BLOCK = 1 << 17


def _in_row_blocks(fn: Callable[..., Any], *arrays: Any) -> Any:
    """``fn`` over blocks of the rows (the last axis kept whole) of same-shaped arrays,
    concatenated back into their shape."""
    import mlx.core as mx

    shape, width = arrays[0].shape, arrays[0].shape[-1]
    rows = [a.reshape(-1, width) for a in arrays]
    step = max(1, _BLOCK // width)
    blocks = [fn(*(r[i : i + step] for r in rows)) for i in range(0, rows[0].shape[0], step)]
    return mx.concatenate(blocks).reshape(shape)


def swiglu(gate: Any, x: Any) -> Any:
    """``silu(gate) * x`` (float32).

    ``view`` cannot be compiled shapeless, so a decode input (one token per row: a few
    shapes) runs as one loop compiled per shape, and a prefill input (any shape) as two
    shapeless loops around the ``view``: 4.5 and 6.7 ns per element here, against mlx-lm's
    20-26; inputs above :data:`_BLOCK` elements in blocks of rows (2-D blocks: the prefill
    loops)."""
    if gate.size > _BLOCK:
        return _in_row_blocks(_swiglu_parts, gate, x)
    if gate.shape[-2] == 1:
        return _compile("fused", _fused_swiglu)(gate, x)
    return _swiglu_parts(gate, x)


def _swiglu_parts(gate: Any, x: Any) -> Any:
    p, biased = _compile("parts", _neg_exp_parts, shapeless=True)(gate)
    two_n = _power_of_two(biased)
    return _compile("combine", _swiglu_from_parts, shapeless=True)(gate, x, p, two_n)


def _exp_parts_below_zero(shifted: Any) -> tuple[Any, Any]:
    """:func:`_exp_parts` of scores minus their row's maximum; those more than 87 below it
    (masked ones among them) get exactly 0, as MLX's own ``exp`` gives them."""
    import mlx.core as mx

    p, biased = _exp_parts(shifted)
    return mx.where(shifted < -87.0, 0.0, p), biased


#: Fewer scores than this (one or a few rows on a short context) go to MLX's ``softmax``: the
#: polynomial's extra operations cost more to dispatch than its ``exp`` saves (measured here:
#: even at ~8k scores; at 900, one row of 100 tokens, 112 us against MLX's 78).
_SOFTMAX_MIN = 1 << 13


def _softmax_rows(scores: Any) -> Any:
    import mlx.core as mx

    # The row reductions and the broadcasts against them stay outside the compiled loop: a
    # shapeless compiled function must not broadcast (its first trace fixes which axes do,
    # and a row of one score, a first decode step, would make every later call read past
    # its rows).
    shifted = scores - mx.max(scores, axis=-1, keepdims=True)
    p, biased = _compile("softmax exp", _exp_parts_below_zero, shapeless=True)(shifted)
    e = p * _power_of_two(biased)
    return e / mx.sum(e, axis=-1, keepdims=True)


def softmax(scores: Any) -> Any:
    """Softmax over the last axis, with the polynomial exp for float32 scores (1.4-1.9x
    MLX's CPU ``softmax`` at attention's shapes here, max error 2.4e-7 against it; ~1.3x in
    blocks) and MLX's ``softmax(precise=True)`` for any other dtype and for few scores. The
    polynomial runs as a shapeless compiled loop, the ``view`` that builds ``2**n`` after
    it, as in :func:`swiglu`."""
    import mlx.core as mx

    if scores.dtype != mx.float32 or scores.size < _SOFTMAX_MIN:
        return mx.softmax(scores, axis=-1, precise=True)
    if scores.size <= _BLOCK:
        return _softmax_rows(scores)
    return _in_row_blocks(_softmax_rows, scores)


def _masked(scores: Any, mask: Any) -> Any:
    """Scores with ``mask`` applied as MLX's fallback applies it: a boolean mask puts the
    dtype's lowest finite value where it is False (a row masked whole, a left-padded prompt
    position, stays finite: no NaN reaches the values of the rows that attend it), any other
    mask is added."""
    import mlx.core as mx

    if mask is None:
        return scores
    if mask.dtype == mx.bool_:
        return mx.where(mask, scores, mx.array(mx.finfo(scores.dtype).min, scores.dtype))
    return scores + mask


def decode_attention(queries: Any, keys: Any, values: Any, scale: float, mask: Any) -> Any:
    """Attention of one query token per row: queries (B, H, 1, D), keys (B, Hk, L, D),
    values (B, Hk, L, Dv), ``mask`` None or of a shape :func:`_decode_mask` accepts (boolean:
    True attends; otherwise added to the scores). The query heads that share a key/value head
    become the rows of one product, where MLX's CPU fallback makes one product per head."""
    b, h, _, d = queries.shape
    hk = keys.shape[1]
    scores = (queries * scale).reshape(b, hk, h // hk, d) @ keys.swapaxes(-1, -2)
    weights = softmax(_masked(scores, mask))
    return (weights @ values).reshape(b, h, 1, values.shape[-1])  # values' head size


def prefill_attention(queries: Any, keys: Any, values: Any, scale: float, mask: Any) -> Any:
    """Attention of several query tokens per row (a prefill chunk): queries (B, H, L, D),
    keys (B, Hk, T, D) with the chunk's own tokens last, ``mask`` None, ``"causal"`` or of a
    shape :func:`_prefill_mask` accepts. The query heads that share a key/value head are
    folded into the rows of one product, as in :func:`decode_attention`, and the softmax is
    :func:`softmax`'s, where MLX's CPU fallback spends most of its time in ``exp``."""
    import mlx.core as mx

    b, h, length, d = queries.shape
    hk, total = keys.shape[1], keys.shape[2]
    rep = h // hk
    scores = (queries * scale).reshape(b, hk, rep * length, d) @ keys.swapaxes(-1, -2)
    scores = scores.reshape(b, hk, rep, length, total)
    if isinstance(mask, str):  # "causal": query i is token total - length + i
        mask = mx.arange(total)[None] <= mx.arange(total - length, total)[:, None]
    elif mask is not None and mask.ndim == 4:
        mask = mx.expand_dims(mask, 2)  # (B or 1, 1, 1, L, T) against (B, Hk, rep, L, T)
    weights = softmax(_masked(scores, mask)).reshape(b, hk, rep * length, total)
    return (weights @ values).reshape(b, h, length, values.shape[-1])


def _decode_mask(mask: Any, batch: int) -> bool:
    """Whether ``mask`` broadcasts the same against the folded scores (B, Hk, H/Hk, L) as
    against (B, H, 1, L): None, (L,), (1, L), or (1 or B, 1, 1, L)."""
    if mask is None:
        return True
    shape = getattr(mask, "shape", None)
    if shape is None:
        return False  # "causal": a prefill mask
    if len(shape) == 1 or (len(shape) == 2 and shape[0] == 1):
        return True
    return len(shape) == 4 and shape[0] in (1, batch) and shape[1] == 1 and shape[2] == 1


def _prefill_mask(mask: Any, length: int, total: int) -> bool:
    """Whether :func:`prefill_attention` applies ``mask`` as MLX does: None, ``"causal"``,
    (L, T), or (1 or B, 1, L, T) (BatchKVCache's left-padded prompts)."""
    if mask is None or (isinstance(mask, str) and mask == "causal"):
        return True
    shape = getattr(mask, "shape", None)
    if shape is None or tuple(shape[-2:]) != (length, total):
        return False
    return len(shape) == 2 or (len(shape) == 4 and shape[1] == 1)


def _mask_dtype_fits(mask: Any, queries: Any) -> bool:
    """A boolean mask or none, or an additive one of the queries' dtype: MLX refuses an
    additive mask that would promote the output (float32 on a float16 model), which
    :func:`_masked` would silently do."""
    import mlx.core as mx

    dtype = getattr(mask, "dtype", None)
    return dtype is None or dtype == mx.bool_ or dtype == queries.dtype


def _attention_dispatcher(original: Callable[..., Any]) -> Callable[..., Any]:
    def scaled_dot_product_attention(
        queries: Any, keys: Any, values: Any, cache: Any, scale: float, mask: Any,
        sinks: Any = None,
    ) -> Any:  # fmt: skip
        if (
            _fast_here()
            and sinks is None
            and not hasattr(cache, "bits")  # quantized KV cache: mlx-lm's own kernel
            and queries.shape[1] % keys.shape[1] == 0
            and _mask_dtype_fits(mask, queries)
        ):
            length, total = queries.shape[2], keys.shape[2]
            if length == 1 and _decode_mask(mask, queries.shape[0]):
                return decode_attention(queries, keys, values, scale, mask)
            if 1 < length <= total and _prefill_mask(mask, length, total):
                return prefill_attention(queries, keys, values, scale, mask)
        return original(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)

    scaled_dot_product_attention.__wrapped__ = original  # type: ignore[attr-defined]
    return scaled_dot_product_attention


def _swiglu_dispatcher(original: Callable[..., Any]) -> Callable[..., Any]:
    import mlx.core as mx

    def dispatched_swiglu(gate: Any, x: Any) -> Any:
        if (
            _fast_here()
            and gate.ndim >= 2
            and gate.dtype == mx.float32
            and x.dtype == mx.float32
            and gate.shape == x.shape
        ):
            return swiglu(gate, x)
        return original(gate, x)

    dispatched_swiglu.__wrapped__ = original  # type: ignore[attr-defined]
    return dispatched_swiglu


def install(model: Any) -> tuple[list[str], list[str]]:
    """Put the dispatchers into every module the model's layers come from, and
    cpu_rope_norm.py's RoPE and RMSNorm onto the model's own instances; returns (names
    replaced, names not replaced: no module of the model calls mlx-lm's function by that
    name or has such a layer, or what needs MLX's CPU compiler where it cannot run:
    ``g++``)."""
    from mlx_lm.models import activations, base

    from .compat import replace_module_functions

    sdpa = _unwrapped(base.scaled_dot_product_attention)
    wanted: dict[str, tuple[Any, Callable[[Any], Callable[..., Any]]]] = {
        "scaled_dot_product_attention": (sdpa, _attention_dispatcher)
    }
    compiles = shutil.which("g++") is not None
    if compiles:
        wanted["swiglu"] = (_unwrapped(activations.swiglu), _swiglu_dispatcher)
    replaced, missing = replace_module_functions(model, wanted)
    if not compiles:
        return replaced, [*missing, "swiglu", "rope", "rms_norm"]
    from . import cpu_rope_norm

    swapped = cpu_rope_norm.install(model)
    missing += [name for name in ("rope", "rms_norm") if name not in swapped]
    return replaced + swapped, missing


def _unwrapped(fn: Any) -> Any:
    """mlx-lm's own function, also where a dispatcher of ours already stands in for it."""
    return getattr(fn, "__wrapped__", fn)
