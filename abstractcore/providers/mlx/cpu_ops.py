"""Faster CPU formulations of two model operations: decode attention and SwiGLU.

Measured on this project's 2-core machine (float32, OpenBLAS), a 32-row decode step of
SmolLM2-135M spent about 65 ms in attention and 32 ms in SwiGLU out of ~350 ms:

- **Attention (decode only).** For a one-token query, MLX's CPU
  ``scaled_dot_product_attention`` makes one small matrix product per (row, query head).
  :func:`decode_attention` folds the query heads that share a key/value head into the rows
  of one product (grouped-query attention), a third as many BLAS calls for SmolLM2's 9 query
  / 3 key-value heads. It does the same arithmetic; for SmolLM2's shapes its output equals
  MLX's bit for bit, and where more query heads share a key/value head the BLAS may sum in
  another order (float32 rounding; both tested). Prefill keeps MLX's kernel.
- **SwiGLU (decode and prefill).** MLX's CPU ``exp`` runs at ~15 ns per element here (a
  multiply at ~0.4 ns), so the sigmoid dominates. :func:`swiglu` computes ``exp`` as a
  Cody-Waite range reduction and a degree-5 polynomial (Cephes' ``expf``) in compiled
  loops: 3-4x faster, and closer to the exact value than MLX's own ``exp`` (max relative
  error 8e-8 against 3.8e-6; ``tests/providers/mlx/test_cpu_ops.py``).

The model code calls these through module globals (``scaled_dot_product_attention`` and
``swiglu`` in e.g. ``mlx_lm.models.llama``), so :func:`install` has compat.py put a dispatcher
there, in every module the model's layers come from, that uses the fast version only on a
thread that called :func:`enable_on_this_thread` (the engine's) and mlx-lm's own everywhere
else: another model in the same process, such as the benchmark's ``mlx_lm.generate``
baseline, runs unchanged.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["decode_attention", "enable_on_this_thread", "install", "swiglu"]

_local = threading.local()

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


def swiglu(gate: Any, x: Any) -> Any:
    """``silu(gate) * x`` (float32).

    ``view`` cannot be compiled shapeless, so a decode input (one token per row: a few
    shapes) runs as one loop compiled per shape, and a prefill input (any shape) as two
    shapeless loops around the ``view``: 4.5 and 6.7 ns per element here, against mlx-lm's
    20-26."""
    if gate.shape[-2] == 1:
        return _compile("fused", _fused_swiglu)(gate, x)
    p, biased = _compile("parts", _neg_exp_parts, shapeless=True)(gate)
    two_n = _power_of_two(biased)
    return _compile("combine", _swiglu_from_parts, shapeless=True)(gate, x, p, two_n)


def decode_attention(queries: Any, keys: Any, values: Any, scale: float, mask: Any) -> Any:
    """Attention of one query token per row: queries (B, H, 1, D), keys (B, Hk, L, D),
    values (B, Hk, L, Dv), ``mask`` None or of a shape :func:`_decode_mask` accepts (boolean:
    True attends; otherwise added to the scores). The query heads that share a key/value head
    become the rows of one product, where MLX's CPU fallback makes one product per head."""
    import mlx.core as mx

    b, h, _, d = queries.shape
    hk = keys.shape[1]
    scores = (queries * scale).reshape(b, hk, h // hk, d) @ keys.swapaxes(-1, -2)
    if mask is not None:
        if mask.dtype == mx.bool_:
            scores = mx.where(mask, scores, mx.array(-float("inf"), scores.dtype))
        else:
            scores = scores + mask
    weights = mx.softmax(scores, axis=-1, precise=True)
    return (weights @ values).reshape(b, h, 1, values.shape[-1])  # values' head size


def _fast_here() -> bool:
    return getattr(_local, "on", False)


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


def _attention_dispatcher(original: Callable[..., Any]) -> Callable[..., Any]:
    def scaled_dot_product_attention(
        queries: Any, keys: Any, values: Any, cache: Any, scale: float, mask: Any,
        sinks: Any = None,
    ) -> Any:  # fmt: skip
        if (
            _fast_here()
            and sinks is None
            and not hasattr(cache, "bits")  # quantized KV cache: mlx-lm's own kernel
            and queries.shape[2] == 1
            and queries.shape[1] % keys.shape[1] == 0
            and _decode_mask(mask, queries.shape[0])
        ):
            return decode_attention(queries, keys, values, scale, mask)
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
    """Put the dispatchers into every module the model's layers come from; returns (names
    replaced, names not replaced: no module of the model calls mlx-lm's function by that
    name, or SwiGLU where MLX cannot compile for the CPU: it runs ``g++``)."""
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
    return replaced, missing if compiles else [*missing, "swiglu"]


def _unwrapped(fn: Any) -> Any:
    """mlx-lm's own function, also where a dispatcher of ours already stands in for it."""
    return getattr(fn, "__wrapped__", fn)


def enable_on_this_thread(on: bool = True) -> None:
    """Use the fast versions for model calls made by the current thread."""
    _local.on = on
