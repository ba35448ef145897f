"""How the engine divides the device's memory: weights, running requests' KV caches, the
prompt cache, MLX's buffer cache; and the KV bytes a request reserves before it is admitted.

Admission used to count batch rows only, so 32 rows of long contexts could ask for more
memory than the machine has, and batched servers crash with out-of-memory errors (peers'
trackers: mlx-lm #1666, vllm-mlx #442). Here every request reserves the KV bytes it can grow
to (prompt + ``max_tokens``) before it takes a slot:

- it is admitted while the running requests' reservations plus its own fit in
  ``kv_cache_bytes``, and waits (first in, first out) otherwise;
- one that could never fit is refused on the caller's thread with
  :class:`~abstractcore.errors.MemoryBudgetError`, before it is queued.

A reservation is an upper bound: mlx-lm's ``BatchKVCache`` holds every row at the length of the
longest (left padding) and grows in blocks of 256 tokens, so the reservation rounds the
request's tokens up to that block; a request that stops early used less than it reserved.

Defaults, from what the device can hold (Metal's recommended working set, or the machine's
physical memory on the CPU) minus the weights, called *left* below:

- running requests' KV (``kv_cache_bytes``): half of what is left;
- the prompt cache (``prompt_cache_bytes``): a tenth of what is left, at most 2 GiB;
- MLX's buffer cache (``mlx_cache_limit_bytes``, ``mx.set_cache_limit``): freed buffers MLX
  keeps for reuse, unbounded by default, which let a long-running server grow by more than a
  gigabyte that nothing else accounted for; a twentieth of what is left, at most 1 GiB.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from ...errors import MemoryBudgetError

__all__ = [
    "KV_BLOCK",
    "MemoryPlan",
    "device_memory_bytes",
    "kv_bytes_per_token",
    "plan_memory",
]

log = logging.getLogger(__name__)

#: mlx-lm's KV caches grow in steps of this many tokens.
KV_BLOCK = 256
_GiB = 1 << 30


@dataclass(frozen=True)
class MemoryPlan:
    """The budgets one engine works with (bytes)."""

    device_bytes: int
    weights_bytes: int
    kv_budget_bytes: int
    prompt_cache_bytes: int
    mlx_cache_limit_bytes: int
    #: KV bytes one token of one sequence takes (all layers, keys and values); 0 if unknown.
    kv_bytes_per_token: int

    def reservation(self, prompt_tokens: int, max_tokens: int) -> int:
        """The KV bytes a request reserves: its tokens, rounded up to mlx-lm's block."""
        tokens = prompt_tokens + max_tokens
        blocks = -(-tokens // KV_BLOCK)
        return blocks * KV_BLOCK * self.kv_bytes_per_token

    def check(self, prompt_tokens: int, max_tokens: int) -> int:
        """The request's reservation; MemoryBudgetError when it can never be admitted."""
        need = self.reservation(prompt_tokens, max_tokens)
        if need <= self.kv_budget_bytes:
            return need
        per_token = self.kv_bytes_per_token
        fits = self.kv_budget_bytes // per_token // KV_BLOCK * KV_BLOCK if per_token else 0
        field = "max_output_tokens" if prompt_tokens < fits else "messages"
        raise MemoryBudgetError(
            f"the request's KV cache ({prompt_tokens} prompt + {max_tokens} output tokens, "
            f"{need / 2**20:.0f} MiB) can never fit the engine's KV budget "
            f"(kv_cache_bytes={self.kv_budget_bytes}, about {fits} tokens): lower "
            f"max_output_tokens or shorten the prompt, or start the engine with a larger "
            f"kv_cache_bytes",
            field=field,
            provider="mlx",
        )

    def stats(self) -> dict[str, int]:
        return {
            "device_bytes": self.device_bytes,
            "weights_bytes": self.weights_bytes,
            "kv_budget_bytes": self.kv_budget_bytes,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "prompt_cache_budget_bytes": self.prompt_cache_bytes,
            "mlx_cache_limit_bytes": self.mlx_cache_limit_bytes,
        }


def device_memory_bytes() -> int:
    """What the device can hold: Metal's recommended working set on Apple silicon, the
    physical memory elsewhere (MLX's CPU arrays live in it)."""
    import mlx.core as mx

    if mx.default_device() != mx.cpu:
        info: dict[str, Any] = dict(mx.device_info())
        for key in ("max_recommended_working_set_size", "memory_size"):
            if info.get(key):
                return int(info[key])
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * _GiB


def kv_bytes_per_token(model: Any) -> int:
    """Measured, not read from the config (families name and shape their heads differently):
    one token through a fresh cache, then each layer's key and value bytes per position; 0
    when the probe fails."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    try:
        mx.eval(model(mx.array([[0]]), cache=cache))
    except Exception:  # a model that needs more than token ids: admission counts rows only
        log.warning("could not measure the KV bytes per token; KV admission is off", exc_info=True)
        return 0
    total = 0
    for layer in cache:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if keys is None or values is None or keys.ndim < 3:
            continue  # recurrent state: a fixed size, not per token
        total += (keys.nbytes + values.nbytes) // keys.shape[-2]
    return int(total)


def plan_memory(
    model: Any,
    *,
    kv_cache_bytes: int | None,
    prompt_cache_bytes: int | None,
    mlx_cache_limit_bytes: int | None,
) -> MemoryPlan:
    """The engine's budgets for ``model`` (engine thread): the given ones, the defaults above
    for the rest; sets MLX's buffer-cache limit."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    device = device_memory_bytes()
    params: Any = tree_flatten(model.parameters())  # [(name, array), ...]
    weights = sum(int(array.nbytes) for _, array in params)
    left = max(device - weights, 0)
    per_token = kv_bytes_per_token(model)
    kv = left // 2 if kv_cache_bytes is None else kv_cache_bytes
    if kv_cache_bytes is None and per_token and kv < KV_BLOCK * per_token:
        kv = KV_BLOCK * per_token  # a device too small for the defaults still serves a request
        log.warning("little memory is left after the weights; KV budget set to %d bytes", kv)
    prompt = min(left // 10, 2 * _GiB) if prompt_cache_bytes is None else prompt_cache_bytes
    limit = min(left // 20, _GiB) if mlx_cache_limit_bytes is None else mlx_cache_limit_bytes
    mx.set_cache_limit(limit)
    return MemoryPlan(
        device_bytes=device,
        weights_bytes=weights,
        kv_budget_bytes=kv,
        prompt_cache_bytes=prompt,
        mlx_cache_limit_bytes=limit,
        kv_bytes_per_token=per_token,
    )
