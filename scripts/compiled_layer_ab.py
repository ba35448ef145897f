"""mlx-lm's decoder layer as it ships against the same layer with its stateless halves compiled.

    .venv/bin/python scripts/compiled_layer_ab.py --rows 1 8 32 --context 128

The "compiled" variant runs each layer's pre-attention half (RMSNorm, the q/k/v products) and
post-attention half (o product, residual, RMSNorm, gate/up, SwiGLU, down, residual) as two
``mx.compile`` functions; RoPE, the KV cache update and attention stay as mlx-lm runs them,
because the cache is state that a compiled function would have to take and return. Both
variants alternate in one process, each on the same KV cache (``--context`` tokens per row);
it prints the median ms of one decode step per round and whether the logits are identical.
The result is in docs/concurrency.md ("Tried, measured, not kept: mx.compile").
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from abstractcore.providers.mlx.blas import preload_blas

preload_blas()  # before MLX's first import (docs/architecture.md)

import mlx.core as mx  # noqa: E402
from mlx_lm.models import llama  # noqa: E402
from mlx_lm.models.base import scaled_dot_product_attention  # noqa: E402
from profile_decode_step import _cache  # noqa: E402


def compiled_block(eps: float) -> Any:
    """A ``TransformerBlock.__call__`` whose two stateless halves are compiled."""

    @mx.compile
    def pre(x: mx.array, w_ln: mx.array, wq: mx.array, wk: mx.array, wv: mx.array) -> Any:
        h = mx.fast.rms_norm(x, w_ln, eps)
        return h @ wq.T, h @ wk.T, h @ wv.T

    @mx.compile
    def post(x: mx.array, a: mx.array, wo: mx.array, w_ln: mx.array, wg: mx.array,
             wu: mx.array, wd: mx.array) -> mx.array:  # fmt: skip
        h = x + a @ wo.T
        n = mx.fast.rms_norm(h, w_ln, eps)
        g = n @ wg.T
        return h + ((g * mx.sigmoid(g)) * (n @ wu.T)) @ wd.T

    def call(self: Any, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        at, mlp = self.self_attn, self.mlp
        b, n, _ = x.shape
        q, k, v = pre(x, self.input_layernorm.weight, at.q_proj.weight, at.k_proj.weight,
                      at.v_proj.weight)  # fmt: skip
        q = q.reshape(b, n, at.n_heads, -1).transpose(0, 2, 1, 3)
        k = k.reshape(b, n, at.n_kv_heads, -1).transpose(0, 2, 1, 3)
        v = v.reshape(b, n, at.n_kv_heads, -1).transpose(0, 2, 1, 3)
        q, k = at.rope(q, offset=cache.offset), at.rope(k, offset=cache.offset)
        k, v = cache.update_and_fetch(k, v)
        o = scaled_dot_product_attention(q, k, v, cache=cache, scale=at.scale, mask=mask)
        o = o.transpose(0, 2, 1, 3).reshape(b, n, -1)
        return post(x, o, at.o_proj.weight, self.post_attention_layernorm.weight,
                    mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)  # fmt: skip

    return call


def step_ms(model: Any, rows: int, context: int, reps: int) -> tuple[float, mx.array]:
    mx.random.seed(0)  # the same cache and tokens for both variants
    cache = _cache(model, rows, context)
    tokens = mx.random.randint(0, 1000, (rows, 1))

    def step() -> mx.array:
        out = model(tokens, cache=cache)[:, -1, :]
        mx.eval(out)
        for c in cache:
            c.trim(1)
        return out

    for _ in range(3):
        step()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = step()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()

    from abstractcore.providers.mlx.loading import load_model, resolve_model_path

    model, _ = load_model(resolve_model_path(args.model))
    if not isinstance(model, llama.Model):
        raise SystemExit(f"{args.model} is not a llama-architecture model")
    variants = {"plain": llama.TransformerBlock.__call__,
                "compiled": compiled_block(model.args.rms_norm_eps)}  # fmt: skip
    try:
        for rows in args.rows:
            times: dict[str, list[float]] = {name: [] for name in variants}
            logits: dict[str, mx.array] = {}
            for _ in range(args.rounds):
                for name, call in variants.items():
                    llama.TransformerBlock.__call__ = call  # type: ignore[method-assign]
                    ms, logits[name] = step_ms(model, rows, args.context, args.reps)
                    times[name].append(ms)
            diff = mx.abs(logits["plain"] - logits["compiled"]).max().item()
            print(f"{rows} rows: " + ", ".join(
                f"{n} {' / '.join(f'{t:.1f}' for t in ts)} ms" for n, ts in times.items())
                + f"; max |logit difference| {diff:.1e}", flush=True)  # fmt: skip
    finally:
        llama.TransformerBlock.__call__ = variants["plain"]  # type: ignore[method-assign]


if __name__ == "__main__":
    main()
