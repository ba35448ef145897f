"""RoPE and RMSNorm of a decode step in a few CPU primitives instead of dozens.

``mx.fast.rope`` and ``mx.fast.rms_norm`` are single kernels on Metal, but on the CPU MLX
evaluates them through their fallbacks, built from ordinary operations: about 25 primitives
per RoPE call (the frequencies, positions, ``cos``/``sin``, the two halves, their products
and a concatenation) and about 10 per RMSNorm. A one-row decode step of SmolLM2-135M has
60 RoPE calls and 61 norms, some 2,000 of its ~4,000 primitives, and MLX spends several
microseconds dispatching each on the CPU whatever its size: removing both outright took a
one-row step from 36 to 26 ms here (docs/concurrency.md, "RoPE and RMSNorm in fewer
primitives").

For decode-shaped inputs (one token per row, float32) the classes below compute the same
arithmetic as the fallbacks, in the same order, so the results are bit-identical (tested):

- :func:`rope`: the ``cos``/``sin`` tables are built once per position offset and shared
  by every layer of a step when the offset is a Python ``int`` (a model's own ``KVCache``:
  the solo lane), and per call when it is an array (``BatchKVCache``'s per-row offsets,
  which mlx-lm updates in place, so an array's identity cannot key a cache); the rotation is
  one compiled loop over the two halves viewed as a (2, D/2) axis, the second of them
  reversed, instead of slices, four products and a concatenation.
- :func:`rms_norm`: one compiled function (the square, the row mean, ``rsqrt`` and both
  products), traced per shape; decode inputs come in a few shapes (row counts).

Prefill chunks, other dtypes, partial or "traditional" rotations and RoPE subclasses with
their own frequencies (Llama 3's, YaRN's) keep MLX's code: a prefill chunk pays the
fallbacks' dispatch once per chunk, not per token. As in cpu_ops.py, the fast path runs only
on a thread that enabled it (the engine's); the classes are swapped onto the model's own
``nn.RoPE`` and ``nn.RMSNorm`` instances (weights and parameter tree unchanged), and any
other thread calling the same model gets MLX's code. Like every module that imports MLX at
its top, this one is imported only after the BLAS preload (cpu_ops.install imports it).
The thread switch is cpu_switch.py's, shared with cpu_ops.py.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import mlx.core as mx
from mlx.nn.layers.normalization import RMSNorm
from mlx.nn.layers.positional_encoding import RoPE

from .compat import set_layer_class
from .cpu_switch import enabled_here as _fast_here

__all__ = ["FastRMSNorm", "FastRoPE", "install", "rms_norm", "rope"]

_local = threading.local()


def _rotate(halves: Any, reversed_halves: Any, cos2: Any, sin2: Any) -> Any:
    # (x1, x2) -> (x1*cos - x2*sin, x2*cos + x1*sin): the fallback's products and sums, in its
    # order (sin2's first half is -sin, which is exact).
    return halves * cos2 + reversed_halves * sin2


def _angle_tables(positions: Any, inv_freqs2: Any, signs: Any) -> tuple[Any, Any]:
    theta = positions * inv_freqs2  # the fallback's positions[:, None] * inv_freqs, twice
    return mx.cos(theta), mx.sin(theta) * signs


def _rms(x: Any, weight: Any, eps: float) -> Any:
    # The fallback's order: x * rsqrt(mean(x^2) + eps), then the weight.
    return weight * (x * mx.rsqrt(mx.mean(mx.square(x), axis=-1, keepdims=True) + eps))


_rotate_compiled = mx.compile(_rotate)
_angle_tables_compiled = mx.compile(_angle_tables)
_rms_compiled = mx.compile(_rms)


def _frequencies(dims: int, base: float) -> tuple[Any, Any]:
    """The fallback's frequencies ``exp(-i * log(base) / (D/2))`` for i < D/2, repeated
    along a (2, D/2) axis, and the signs (-1 over 1) that turn ``sin`` into the rotation's
    (-sin, sin); evaluated once per (dims, base)."""
    key = (dims, base)
    kept: dict[tuple[int, float], tuple[Any, Any]] = _local.__dict__.setdefault("freqs", {})
    if key not in kept:
        half = dims // 2
        t = mx.float32
        inv_freqs = mx.exp(mx.arange(0, -half, -1, dtype=t) * (math.log(base) / half))
        signs = mx.array([[-1.0], [1.0]], dtype=t)
        kept[key] = (mx.stack([inv_freqs, inv_freqs]), signs)
        mx.eval(kept[key])
    return kept[key]


def _tables(dims: int, base: float, scale: float, offset: Any) -> tuple[Any, Any]:
    """``cos`` and (-sin, sin) of one token's angles along a (2, D/2) axis: shape (2, D/2),
    or (B, 1, 1, 2, D/2) for one offset per row. The fallback's positions are
    ``(arange(1) + offset) * scale``: the offset (exact in float32 below 2**24) times the
    scale."""
    inv_freqs2, signs = _frequencies(dims, base)
    if isinstance(offset, int):
        positions = mx.array(float(offset), mx.float32) * scale
    else:
        positions = offset.astype(mx.float32) * scale
        if offset.ndim == 1:
            positions = positions.reshape(-1, 1, 1, 1, 1)  # (B, 1, 1, 2, D/2) against x
    cos2, sin2 = _angle_tables_compiled(positions, inv_freqs2, signs)
    return cos2, sin2


def _int_offset_tables(dims: int, base: float, scale: float, offset: int) -> tuple[Any, Any]:
    """:func:`_tables` for an ``int`` offset, kept for the next call with the same key: the
    q and k of every layer of a step ask for the same one."""
    key = (dims, base, scale, offset)
    last = getattr(_local, "tables", None)
    if last is None or last[0] != key:
        last = (key, _tables(dims, base, scale, offset))
        _local.tables = last
    return last[1]


def rope(x: Any, dims: int, base: float, scale: float, offset: Any) -> Any:
    """``mx.fast.rope(x, dims, traditional=False, base=base, scale=scale, offset=offset)``
    for x of shape (B, H, 1, D) with ``dims == D``: float32, ``offset`` an ``int``, a 0-d
    array, or one offset per row (B,)."""
    b, h, length, d = x.shape
    if isinstance(offset, int):
        cos2, sin2 = _int_offset_tables(dims, base, scale, offset)
    else:
        cos2, sin2 = _tables(dims, base, scale, offset)
    halves = x.reshape(b, h, length, 2, d // 2)
    return _rotate_compiled(halves, halves[..., ::-1, :], cos2, sin2).reshape(b, h, length, d)


def rms_norm(x: Any, weight: Any, eps: float) -> Any:
    """``mx.fast.rms_norm(x, weight, eps)`` as one compiled function (float32)."""
    return _rms_compiled(x, weight, eps)


def _rope_fits(x: Any, dims: int, traditional: bool, offset: Any) -> bool:
    if traditional or x.ndim != 4 or x.shape[2] != 1 or x.shape[3] != dims or dims % 2:
        return False
    if x.dtype != mx.float32:
        return False
    if isinstance(offset, bool) or not isinstance(offset, (int, mx.array)):
        return False
    return isinstance(offset, int) or offset.ndim == 0 or offset.shape == (x.shape[0],)


class FastRoPE(RoPE):
    """``nn.RoPE`` that runs :func:`rope` for decode inputs on an enabled thread."""

    def __call__(self, x: Any, offset: Any = 0) -> Any:
        if _fast_here() and _rope_fits(x, self.dims, self.traditional, offset):
            return rope(x, self.dims, float(self.base), float(self.scale), offset)
        return super().__call__(x, offset=offset)


class FastRMSNorm(RMSNorm):
    """``nn.RMSNorm`` that runs :func:`rms_norm` for decode inputs on an enabled thread."""

    def __call__(self, x: Any) -> Any:
        weight = self["weight"]
        if (
            _fast_here()
            and x.ndim >= 2
            and x.shape[-2] == 1
            and x.dtype == mx.float32
            and weight.dtype == mx.float32
        ):
            return rms_norm(x, weight, self.eps)
        return super().__call__(x)  # type: ignore[no-untyped-call]


def install(model: Any) -> list[str]:
    """Swap :class:`FastRoPE` / :class:`FastRMSNorm` onto the model's plain ``nn.RoPE`` and
    ``nn.RMSNorm`` instances (subclasses with their own ``__call__`` stay as they are);
    returns the names of the kinds replaced ("rope", "rms_norm")."""
    replaced: set[str] = set()
    for module in model.modules():
        if type(module) is RoPE or type(module) is FastRoPE:
            set_layer_class(module, FastRoPE)
            replaced.add("rope")
        elif type(module) is RMSNorm or type(module) is FastRMSNorm:
            set_layer_class(module, FastRMSNorm)
            replaced.add("rms_norm")
    return sorted(replaced)
