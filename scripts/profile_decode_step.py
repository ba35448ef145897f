"""Where one decode step's time goes: the op-level profile behind docs/concurrency.md.

    .venv/bin/python scripts/profile_decode_step.py          # 1, 8, 32 rows; 512-token context
    .venv/bin/python scripts/profile_decode_step.py --rows 32 --context 1024 --prompt 256

With ``--engine-ops`` the model runs the engine's CPU replacements (cpu_ops.py: attention
and SwiGLU; cpu_rope_norm.py: RoPE and RMSNorm), as the engine's thread does; without it,
mlx-lm's model as it ships. For each row count it times, on a KV cache of ``--context``
tokens per row:

- the whole step as the engine runs it (``model(tokens, cache)`` and the arg-max, evaluated
  once: MLX's lazy graph, dispatched and run as one), and how many primitives MLX evaluates
  for it (on the CPU each costs a few microseconds of dispatch, whatever its size);
- the dense products (q, k, v, o, gate, up, down) of all layers, evaluated together so that
  each weight is read once, as in a step;
- each other kind of operation of the same step evaluated on its own, summed over the
  layers: attention, the elementwise chains (two RMSNorms, RoPE on q and k, SwiGLU, two
  residual adds), the output projection with the final norm, and sampling (the arg-max, and
  the log-softmax mlx-lm computes per row);

then a prefill pass of ``--prompt`` tokens for one row, whole and by kind of op. It also
measures the machine: the time to stream the model's weights once (a product per weight
matrix at one row, all evaluated together) gives the bound of one stream. "Isolated" sums
include each op's own dispatch and memory pass, so they add up to more than the fused step
when MLX overlaps work, and to less when the step has overheads (Python, graph building,
dispatch) of its own: the difference is reported as such.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from abstractcore.providers.mlx.blas import preload_blas

preload_blas()  # before MLX's first import: OpenBLAS on Linux (docs/architecture.md)

import mlx.core as mx  # noqa: E402


def _median_s(fn: Callable[[], Any], reps: int) -> float:
    for _ in range(2):
        mx.eval(fn())
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _cache(model: Any, rows: int, context: int) -> list[Any]:
    """A KV cache of ``context`` tokens for each of ``rows`` rows: one row prefilled, then
    repeated (the step's cost does not depend on what the keys hold)."""
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    model(mx.random.randint(0, 1000, (1, context)), cache=cache)
    for c in cache:
        keys, values = c.keys[..., : c.offset, :], c.values[..., : c.offset, :]
        c.state = (mx.repeat(keys, rows, axis=0), mx.repeat(values, rows, axis=0), context)
    mx.eval([c.state for c in cache])
    return cache


def profile_rows(model: Any, rows: int, context: int, reps: int) -> dict[str, float]:
    """Seconds per decode step at ``rows`` rows, whole and by kind of op."""
    inner = model.model
    layer = inner.layers[0]
    att, mlp = layer.self_attn, layer.mlp
    # The functions the layers call, from their own module: with --engine-ops, the
    # dispatchers to cpu_ops.py's versions.
    module = sys.modules[type(att).__module__]
    scaled_dot_product_attention, swiglu = module.scaled_dot_product_attention, module.swiglu
    n_layers = len(inner.layers)
    d = model.args.hidden_size
    tokens = mx.random.randint(0, 1000, (rows, 1))

    # The whole step; the token it appends to the cache is trimmed off again after each one.
    cache = _cache(model, rows, context)

    def step() -> Any:
        out = mx.argmax(model(tokens, cache=cache)[:, -1, :], axis=-1)
        mx.eval(out)
        for c in cache:
            c.trim(1)
        return out

    total = _median_s(step, reps)

    x = mx.random.normal((rows, 1, d))
    h_dim = mlp.gate_proj.weight.shape[0]
    g = mx.random.normal((rows, 1, h_dim))
    heads, kv_heads = att.n_heads, att.n_kv_heads
    head_dim = d // heads
    q = mx.random.normal((rows, heads, 1, head_dim))
    k = mx.random.normal((rows, kv_heads, context + 1, head_dim))
    v = mx.random.normal((rows, kv_heads, context + 1, head_dim))
    attn_out = mx.random.normal((rows, 1, heads * head_dim))

    def products() -> list[Any]:  # every layer's weights once, as a step reads them
        return [
            out
            for lay in inner.layers
            for out in (
                lay.self_attn.q_proj(x), lay.self_attn.k_proj(x), lay.self_attn.v_proj(x),
                lay.self_attn.o_proj(attn_out), lay.mlp.gate_proj(x), lay.mlp.up_proj(x),
                lay.mlp.down_proj(g),
            )
        ]  # fmt: skip

    per_layer = {
        "attention": _median_s(
            lambda: scaled_dot_product_attention(q, k, v, cache=None, scale=att.scale, mask=None),
            reps,
        ),
        "elementwise": sum(
            _median_s(f, reps)
            for f in (
                lambda: layer.input_layernorm(x),
                lambda: layer.post_attention_layernorm(x),
                lambda: att.rope(q, offset=context),
                lambda: att.rope(k[:, :, :1], offset=context),
                lambda: swiglu(g, g),
                lambda: x + x,
                lambda: x + x,
            )
        ),  # fmt: skip
    }
    out = {"products": _median_s(products, reps)}
    out.update({k: v * n_layers for k, v in per_layer.items()})
    lm_head = inner.embed_tokens.as_linear if model.args.tie_word_embeddings else model.lm_head
    out["output projection"] = _median_s(lambda: lm_head(inner.norm(x)), reps)
    logits = mx.random.normal((rows, inner.embed_tokens.weight.shape[0]))
    out["arg-max"] = _median_s(lambda: mx.argmax(logits, axis=-1), reps)
    out["log-softmax (mlx-lm's step)"] = _median_s(
        lambda: logits - mx.logsumexp(logits, axis=-1, keepdims=True), reps
    )
    out["isolated sum"] = sum(
        out[k] for k in ("products", "attention", "elementwise", "output projection", "arg-max")
    )
    out["whole step"] = total
    out["primitives"] = _primitives(mx.argmax(model(tokens, cache=cache)[:, -1, :], axis=-1))
    for c in cache:
        c.trim(1)
    return out


def _primitives(out: Any) -> int:
    """The operations MLX evaluates for ``out`` (not yet evaluated): the nodes of its graph
    that are primitives, counted in MLX's own export of the graph."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "graph.dot"
        mx.export_to_dot(str(path), out)
        return path.read_text().count("shape=rectangle")


def weight_stream_s(model: Any, reps: int) -> tuple[float, float]:
    """(seconds to read every weight matrix once at one row, their bytes): one product per
    matrix, all evaluated together, so that each weight is read once per repetition as a
    step reads it (timing one matrix again and again would read it from the CPU's caches)."""
    weights = [
        w
        for _, m in model.named_modules()
        if isinstance(w := m.get("weight"), mx.array) and w.ndim == 2
    ]
    inputs = [mx.random.normal((1, w.shape[1])) for w in weights]
    mx.eval(inputs)
    seconds = _median_s(lambda: [x @ w.T for x, w in zip(inputs, weights, strict=True)], reps)
    return seconds, sum(w.nbytes for w in weights)


def profile_prefill(model: Any, prompt: int, reps: int) -> dict[str, float]:
    """Seconds for one prefill pass of ``prompt`` tokens (one row), whole and by kind of op.

    The whole pass evaluates the KV cache only, as mlx-lm's prefill does (the logits of a
    prompt's last token come from the first decode step), so the output projection is not
    part of it."""
    from mlx_lm.models.cache import make_prompt_cache

    tokens = mx.random.randint(0, 1000, (1, prompt))

    def run() -> Any:
        cache = make_prompt_cache(model)
        model.model(tokens, cache=cache)
        return [c.state for c in cache]

    inner = model.model
    layer = inner.layers[0]
    att, mlp = layer.self_attn, layer.mlp
    module = sys.modules[type(att).__module__]
    scaled_dot_product_attention, swiglu = module.scaled_dot_product_attention, module.swiglu
    d = model.args.hidden_size
    heads, kv_heads = att.n_heads, att.n_kv_heads
    head_dim = d // heads
    x = mx.random.normal((1, prompt, d))
    g = mx.random.normal((1, prompt, mlp.gate_proj.weight.shape[0]))
    q = mx.random.normal((1, heads, prompt, head_dim))
    k = mx.random.normal((1, kv_heads, prompt, head_dim))
    n = len(inner.layers)
    products = sum(
        _median_s(f, reps)
        for f in (
            lambda: att.q_proj(x), lambda: att.k_proj(x), lambda: att.v_proj(x),
            lambda: att.o_proj(x), lambda: mlp.gate_proj(x), lambda: mlp.up_proj(x),
            lambda: mlp.down_proj(g),
        )
    ) * n  # fmt: skip
    attention = n * _median_s(
        lambda: scaled_dot_product_attention(q, k, k, cache=None, scale=att.scale, mask="causal"),
        reps,
    )
    elementwise = n * sum(
        _median_s(f, reps)
        for f in (
            lambda: layer.input_layernorm(x), lambda: layer.post_attention_layernorm(x),
            lambda: att.rope(q), lambda: att.rope(k), lambda: swiglu(g, g),
            lambda: x + x, lambda: x + x,
        )
    )  # fmt: skip
    return {
        "whole pass": _median_s(run, reps),
        "products": products,
        "attention": attention,
        "elementwise": elementwise,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--context", type=int, default=512, help="KV tokens per row")
    p.add_argument("--prompt", type=int, default=256, help="prefill tokens")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument(
        "--engine-ops", action="store_true",
        help="with the engine's CPU attention and SwiGLU (cpu_ops.py, fast_cpu_ops)",
    )  # fmt: skip
    args = p.parse_args()

    from abstractcore.providers.mlx import cpu_ops
    from abstractcore.providers.mlx.loading import load_model, resolve_model_path

    model, _ = load_model(resolve_model_path(args.model))
    if args.engine_ops:
        cpu_ops.install(model)
        cpu_ops.enable_on_this_thread()
    stream_s, size = weight_stream_s(model, args.reps)
    print(f"weights: {size / 1e6:.0f} MB; read once at one row: {stream_s * 1e3:.1f} ms "
          f"({size / stream_s / 1e9:.1f} GB/s): the bound of one stream, "
          f"{1 / stream_s:.0f} tok/s\n")  # fmt: skip
    rows = [profile_rows(model, r, args.context, args.reps) for r in args.rows]
    keys = [k for k in rows[0] if k != "primitives"]
    print(f"| ms per decode step (context {args.context}) | "
          + " | ".join(f"{r} rows" for r in args.rows) + " |")  # fmt: skip
    print("|---|" + "---:|" * len(args.rows))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{r[k] * 1e3:.1f}" for r in rows) + " |")
    print("| whole step - isolated sum (overheads: Python, graph, dispatch; negative: overlap) | "
          + " | ".join(f"{(r['whole step'] - r['isolated sum']) * 1e3:.1f}" for r in rows)
          + " |")  # fmt: skip
    print("| primitives MLX evaluates per step (count) | "
          + " | ".join(str(r["primitives"]) for r in rows) + " |")  # fmt: skip
    pre = profile_prefill(model, args.prompt, args.reps)
    print(f"\nprefill of {args.prompt} tokens, one row: {pre['whole pass'] * 1e3:.0f} ms "
          f"({args.prompt / pre['whole pass']:.0f} tok/s); of it, isolated: "
          + ", ".join(f"{k} {pre[k] * 1e3:.0f} ms"
                      for k in ("products", "attention", "elementwise")))  # fmt: skip


if __name__ == "__main__":
    main()
