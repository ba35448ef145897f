"""What the engine thread builds before its first step: the model on its own MLX stream, the
tokenizer, the samplers, and the CPU optimizations the machine and the mlx-lm version allow.

MLX streams are thread-bound, so :func:`set_up` runs on the engine thread and everything it
returns stays there (except plain ints and the tokenizer, which callers use under a lock).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import compat
from .memory_plan import MemoryPlan
from .options import EngineOptions
from .row_padding import PaddingSwitch
from .sampling import SamplerCache

__all__ = ["ModelSetup", "set_up"]

log = logging.getLogger(__name__)


@dataclass
class ModelSetup:
    """The loaded model and what was switched on around it. ``merge_reason``: why this
    model's KV cache cannot be trimmed and merged into a batch (then neither prompt caching
    nor solo decoding, whose handover merges it, can work); ``cache_reason``: why prompt
    caching is off (that, or an mlx-lm version it was not verified against)."""

    model: Any
    tokenizer: Any
    stream: Any
    samplers: SamplerCache
    eos: frozenset[int]
    padding: PaddingSwitch
    compat: compat.Compat
    memory: MemoryPlan
    context_length: int | None = None
    vocab_size: int = 0  # the width of the logits (a grammar's masks cover it)
    cpu_ops: list[str] = field(default_factory=list)
    cpu_ops_missing: list[str] = field(default_factory=list)
    merge_reason: str | None = None
    cache_reason: str | None = None
    num_layers: int = 0


def set_up(path: Path, options: EngineOptions, versions: compat.Compat) -> ModelSetup:
    """Load the model at ``path`` and prepare it as ``options`` and the installed mlx-lm
    (``versions``) allow (engine thread)."""
    from .loading import load_model, preload_blas

    preload_blas()
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    from . import cpu_ops, row_padding
    from .memory_plan import plan_memory
    from .prompt_cache import cache_support

    on_cpu = mx.default_device() == mx.cpu
    stream = mx.new_stream(mx.default_device())
    table = None
    replaced: list[str] = []
    missing: list[str] = []
    with mx.stream(stream):
        model, tokenizer = load_model(path)
        mx.eval(model.parameters())
        if options.pad_rows and on_cpu and versions.allows("pad_rows"):
            t0 = time.perf_counter()
            table = row_padding.calibrate(model, options.max_batch_size)
            log.info(
                "row padding for %d dense layers (%.1f s): %s",
                len(row_padding.padded_modules(model)),
                time.perf_counter() - t0,
                table.padded() or "none",
            )
        if options.fast_cpu_ops and on_cpu and versions.allows("fast_cpu_ops"):
            replaced, missing = cpu_ops.install(model)
            cpu_ops.enable_on_this_thread()
        memory = plan_memory(
            model,
            kv_cache_bytes=options.kv_cache_bytes,
            prompt_cache_bytes=options.prompt_cache_bytes,
            mlx_cache_limit_bytes=options.mlx_cache_limit_bytes,
        )
    args = getattr(model, "args", None)
    vocab = int(getattr(args, "vocab_size", 0) or len(tokenizer))
    layers = make_prompt_cache(model)
    merge_reason = cache_support(layers)
    reason = merge_reason
    if reason is None and not versions.allows("prompt_cache"):
        reason = versions.disabled["prompt_cache"]
    return ModelSetup(
        model=model,
        tokenizer=tokenizer,
        stream=stream,
        samplers=SamplerCache(vocab),
        eos=frozenset(int(t) for t in tokenizer.eos_token_ids),
        padding=PaddingSwitch(model, table),
        compat=versions,
        memory=memory,
        context_length=getattr(args, "max_position_embeddings", None),
        vocab_size=vocab,
        cpu_ops=replaced,
        cpu_ops_missing=missing,
        merge_reason=merge_reason,
        cache_reason=reason,
        num_layers=len(layers),
    )
