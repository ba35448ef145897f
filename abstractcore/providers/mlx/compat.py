"""The one boundary to mlx-lm's internals: every read of a private attribute, every write into a
model module or layer, and every in-place write to a KV cache goes through here (the
replacement functions and classes themselves are cpu_ops.py's and row_padding.py's).

Each of these depends on details mlx-lm does not promise to keep (they changed inside 0.32
already: 0.32.0 had ``StopSequenceMatcher``/``_matcher_states``, 0.32.2 has
``StopSequences``/``_matchers``), so each is tied to an *optimization* that the engine can
run without. They were verified against the mlx-lm versions in
:data:`VERIFIED_MLX_LM_VERSIONS`; on any other version :func:`check` switches every one of
them off (warning once, the reason in ``MLXProvider.stats()["mlx_lm"]``), and the engine
serves the same output through mlx-lm's public API only: ``BatchGenerator.insert/next/
remove/extract_cache``, ``make_prompt_cache``, the model's ``__call__``, the samplers.

What is switched off, and what each costs when it is:

- ``greedy_step``: :class:`GreedyGenerationBatch` overrides the private
  ``GenerationBatch._step`` (and swaps ``__class__`` of the generator's private
  ``_generation_batch``) to skip log-probabilities on all-greedy steps.
- ``fast_cpu_ops``: :func:`replace_module_functions` rebinds the names a model module calls
  (``scaled_dot_product_attention``, ``swiglu``) to cpu_ops.py's dispatchers.
- ``pad_rows``: :func:`set_layer_class` swaps the class of the model's ``nn.Linear`` /
  ``nn.Embedding`` layers for row_padding.py's padded subclasses. Those are mlx's classes,
  but that the dense products are exactly these layers (and a tied output projection is
  ``Embedding.as_linear``) is how mlx-lm builds its models, not a promise it makes.
- ``prompt_cache``: :func:`kv_layer`, :func:`trim_layers` and :func:`cut_layer` write
  ``KVCache.keys/values/offset`` (whose ``state`` tuple changed shape across versions).
- ``generator_snapshot``: :func:`generator_uids` reads the generator's private batches (for
  ``MLXEngine.snapshot()``, a diagnostic).
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "OPTIMIZATIONS",
    "VERIFIED_MLX_LM_VERSIONS",
    "Compat",
    "MlxLmVersionWarning",
    "check",
    "cut_layer",
    "generator_uids",
    "install_greedy_step",
    "kv_layer",
    "mlx_lm_version",
    "replace_module_functions",
    "set_layer_class",
    "trim_layers",
]

log = logging.getLogger(__name__)

#: The mlx-lm releases every function here was read against and tested with.
VERIFIED_MLX_LM_VERSIONS: tuple[str, ...] = ("0.32.2",)

#: The optimizations that depend on a private detail of mlx-lm.
OPTIMIZATIONS = ("greedy_step", "fast_cpu_ops", "pad_rows", "prompt_cache", "generator_snapshot")


class MlxLmVersionWarning(UserWarning):
    """The installed mlx-lm is not one the engine's optimizations were verified against."""


def mlx_lm_version() -> str:
    """The installed mlx-lm's version ("unknown" when it has no package metadata, e.g. a copy
    on ``PYTHONPATH``: then it counts as unverified)."""
    try:
        return importlib.metadata.version("mlx-lm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Compat:
    """What the installed mlx-lm allows: ``disabled`` maps each optimization that is off to
    why."""

    version: str
    verified: bool
    disabled: dict[str, str] = field(default_factory=dict)

    def allows(self, optimization: str) -> bool:
        """True when ``optimization`` may use mlx-lm's private details."""
        return optimization not in self.disabled

    def stats(self) -> dict[str, Any]:
        """``{"version", "verified", "disabled": {optimization: reason}}``."""
        return {"version": self.version, "verified": self.verified, "disabled": dict(self.disabled)}


def check() -> Compat:
    """The installed mlx-lm's :class:`Compat` (warns once per process for an unverified one)."""
    version = mlx_lm_version()
    if version in VERIFIED_MLX_LM_VERSIONS:
        return Compat(version, True)
    why = (
        f"mlx-lm {version} is not a version this engine was verified against "
        f"({', '.join(VERIFIED_MLX_LM_VERSIONS)}); it relies on mlx-lm's internals"
    )
    _warn_once(version, why)
    return Compat(version, False, {name: why for name in OPTIMIZATIONS})


@functools.cache
def _warn_once(version: str, why: str) -> None:
    message = (
        f"{why}. The MLX engine serves through mlx-lm's public API only, without these "
        f"optimizations: {', '.join(OPTIMIZATIONS)} (see MLXProvider.stats()['mlx_lm'])."
    )
    log.warning(message)
    warnings.warn(message, MlxLmVersionWarning, stacklevel=2)


# ---------------------------------------------------------------------- greedy_step
@functools.cache
def _greedy_batch_class() -> type[Any]:
    """:class:`GreedyGenerationBatch`, made on first use (importing mlx-lm binds a stream to
    the importing thread, so nothing here imports it at module load)."""
    from mlx_lm.generate import GenerationBatch
    from mlx_lm.sample_utils import greedy_sampler

    class GreedyGenerationBatch(GenerationBatch):
        """A ``GenerationBatch`` whose all-greedy steps take the arg-max of the raw logits.

        mlx-lm's step normalizes the whole logits matrix (rows x vocabulary) and splits it
        per row every step, because a sampler may want log-probabilities; a greedy sampler
        does not (the arg-max of ``logits - c`` is the arg-max of ``logits``). With
        SmolLM2's 49152-token vocabulary on the 2-core CPU that was ~80 ms of a 350 ms
        32-row step. So when every row is greedy:

        - the log-probabilities are computed only for the rows in ``_logprob_uids`` (the
          requests that asked for them); the others' responses carry an empty array;
        - rows constrained by a grammar (processors with ``batched_mask``, grammar.py) are
          masked together, one boolean matrix for the step, where mlx-lm's step calls each
          row's processor on its own slice.

        A batch with a sampling row or another kind of logits processor runs mlx-lm's own
        step, which computes (and returns) every row's log-probabilities.
        """

        _no_logprobs: Any
        _logprob_uids: set[int]

        def _fast(self) -> bool:
            b: Any = self  # mlx-lm declares these attributes loosely (None until filled)
            if not b.samplers:
                return False
            fallback = b.fallback_sampler
            if not all((fallback if s is None else s) is greedy_sampler for s in b.samplers):
                return False
            procs = [p for row in (b.logits_processors or ()) for p in (row or ())]
            return all(getattr(p, "batched_mask", False) for p in procs)

        def _step(self) -> tuple[list[int], list[Any]]:
            if not self._fast():
                return super()._step()
            import mlx.core as mx

            b: Any = self
            # The same pipelining as mlx-lm's step: queue the next tokens, read this step's.
            b._current_tokens = b._next_tokens
            b._current_logprobs = b._next_logprobs
            inputs = b._current_tokens
            logits = b.model(inputs[:, None], cache=b.prompt_cache)[:, -1, :]
            rows = [(i, procs) for i, procs in enumerate(b.logits_processors or ()) if procs]
            if rows:
                logits = _mask_grammar_rows(logits, inputs, rows)
            b._next_tokens = mx.argmax(logits, axis=-1)
            b._next_logprobs = _wanted_logprobs(logits, b.uids, b._logprob_uids, b._no_logprobs)
            mx.async_eval(b._next_tokens, b._next_logprobs)  # type: ignore[no-untyped-call]
            mx.eval(inputs, b._current_logprobs)
            tokens: list[int] = inputs.tolist()
            for context, token in zip(b.tokens, tokens):
                context.append(token)  # self.tokens always lists what the KV cache holds
            return tokens, b._current_logprobs

    return GreedyGenerationBatch


def install_greedy_step(generator: Any, logprob_uids: set[int] | None = None) -> bool:
    """Make ``generator``'s generation batch (the one every new batch is merged into) skip
    log-probabilities on all-greedy steps except for the rows in ``logprob_uids`` (a set
    the caller keeps up to date); False when it is not mlx-lm's own class."""
    import mlx.core as mx
    from mlx_lm.generate import GenerationBatch

    batch = generator._generation_batch
    if type(batch) is not GenerationBatch:
        return False
    batch.__class__ = _greedy_batch_class()
    batch._no_logprobs = mx.zeros((0,))  # type: ignore[attr-defined]
    batch._logprob_uids = set() if logprob_uids is None else logprob_uids  # type: ignore[attr-defined]
    return True


def _mask_grammar_rows(logits: Any, inputs: Any, rows: list[tuple[int, Any]]) -> Any:
    """``logits`` with each constrained row narrowed to the tokens its grammar allows. The
    grammars first consume this step's input token (the one sampled last step), so the
    inputs are read now: constrained steps wait for the previous step to finish."""
    import mlx.core as mx
    import numpy as np

    from .grammar import allowed_tokens

    mx.eval(inputs)
    tokens = inputs.tolist()
    vocab = logits.shape[-1]
    words = np.full((logits.shape[0], (vocab + 31) // 32), -1, dtype=np.int32)
    for i, procs in rows:
        for proc in procs:
            proc.observe(tokens[i])
            proc.fill(words, i)
    return mx.where(allowed_tokens(words, vocab), logits, -mx.inf)


def _wanted_logprobs(logits: Any, uids: list[int], wanted: set[int], empty: Any) -> list[Any]:
    """Each row's log-probabilities, computed only for the rows in ``wanted``."""
    import mlx.core as mx

    rows = [i for i, uid in enumerate(uids) if uid in wanted]
    out = [empty] * len(uids)
    if rows:
        picked = logits[mx.array(rows)]
        normalized = picked - mx.logsumexp(picked, axis=-1, keepdims=True)
        for j, i in enumerate(rows):
            out[i] = normalized[j]
    return out


# ---------------------------------------------------------------------- generator_snapshot
def generator_uids(generator: Any) -> list[int]:
    """Every uid the generator holds: decoding, prefilling, and not yet started."""
    uids = list(generator._generation_batch.uids) + list(generator._prompt_batch.uids)
    return uids + [seq[0] for seq in generator._unprocessed_sequences]


# ---------------------------------------------------------------------- fast_cpu_ops
def replace_module_functions(
    model: Any, replacements: dict[str, tuple[Any, Callable[[Any], Callable[..., Any]]]]
) -> tuple[list[str], list[str]]:
    """Rebind, in every module the model's layers come from, each ``name`` that refers to
    ``original`` to ``make(original)``. ``replacements`` maps name -> (original, make).

    Returns (names replaced somewhere, names no module of the model calls by that name). A
    module already patched by an earlier engine counts as replaced (the dispatcher keeps
    the original in ``__wrapped__``).
    """
    import sys

    modules = [sys.modules.get(m) for m in _layer_modules(model)]
    replaced: list[str] = []
    for name, (original, make) in replacements.items():
        hit = False
        for module in modules:
            if module is None or module.__name__ == original.__module__:
                continue  # where the original is defined (e.g. activations.py) stays as it is
            current = getattr(module, name, None)
            if current is original:
                setattr(module, name, make(original))
                hit = True
            elif current is not None and getattr(current, "__wrapped__", None) is original:
                hit = True
        if hit:
            replaced.append(name)
    return replaced, [n for n in replacements if n not in replaced]


def _layer_modules(model: Any) -> list[str]:
    """The modules that define the model's class and its layers' classes (a family's layers
    may live elsewhere, as smollm3's and mistral3's do), mlx-lm's only."""
    names = {type(model).__module__}
    modules = getattr(model, "modules", None)
    if callable(modules):
        names.update(type(m).__module__ for m in modules())
    return sorted(n for n in names if n.startswith("mlx_lm."))


# ---------------------------------------------------------------------- pad_rows
def set_layer_class(layer: Any, cls: type[Any]) -> None:
    """Give ``layer`` the class ``cls`` (its own class, or a subclass of it, and back): its
    weights, their names and the parameter tree stay exactly as they are."""
    layer.__class__ = cls


# ---------------------------------------------------------------------- prompt_cache
def kv_layer(keys: Any, values: Any, offset: int) -> Any:
    """A ``KVCache`` holding ``keys``/``values`` ([1, heads, length, dim]) up to ``offset``."""
    from mlx_lm.models.cache import KVCache

    c = KVCache()  # type: ignore[no-untyped-call]
    c.keys, c.values, c.offset = keys, values, offset
    return c


def trim_layers(cache: Iterable[Any], n: int) -> None:
    """Make every layer cover only its first ``n`` tokens, in place (the arrays stay: what
    ``BatchKVCache.merge`` reads is ``[:offset]``)."""
    for c in cache:
        c.offset = n


def cut_layer(c: Any, n: int, contiguous: Callable[[Any], Any]) -> None:
    """Cut a layer's arrays to exactly its first ``n`` tokens (``contiguous`` copies a view)."""
    if c.keys.shape[2] != n:
        c.keys = contiguous(c.keys[..., :n, :])
        c.values = contiguous(c.values[..., :n, :])
    c.offset = n
