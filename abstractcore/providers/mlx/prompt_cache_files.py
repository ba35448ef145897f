"""Prompt caches on disk: a stored conversation's KV cache as a safetensors file.

The file carries the model it was made by and the token ids it covers in its metadata, so a
file from another model, or not from abstractcore at all, is refused by name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...errors import InvalidRequestError

__all__ = ["load_cache_file", "save_cache_file"]

_FILE_FORMAT = "abstractcore.prompt_cache/1"


def _file_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p if p.name.endswith(".safetensors") else p.with_name(p.name + ".safetensors")


def save_cache_file(
    path: str | os.PathLike[str], tokens: Sequence[int], cache: Sequence[Any], model: str
) -> Path:
    """Write ``cache`` (covering ``tokens``) as safetensors with the model and token ids in
    its metadata; returns the path written (``.safetensors`` appended when missing)."""
    from mlx_lm.models.cache import save_prompt_cache

    target = _file_path(path)
    meta = {"format": _FILE_FORMAT, "model": model, "tokens": json.dumps(list(tokens))}
    try:
        save_prompt_cache(str(target), list(cache), metadata=meta)
    except OSError as exc:
        raise InvalidRequestError(
            f"cannot write the prompt cache file {target}: {exc}", field="path", provider="mlx"
        ) from exc
    return target


def load_cache_file(
    path: str | os.PathLike[str], model: str, num_layers: int
) -> tuple[list[int], list[Any]]:
    """Read a file written by :func:`save_cache_file` for ``model``: (tokens, cache).

    Raises InvalidRequestError (field ``path``) for a missing or unreadable file, one that is
    not an abstractcore prompt cache, or one made by another model (naming both).
    """
    from mlx_lm.models.cache import KVCache, load_prompt_cache

    p = Path(path)
    if not p.exists() and _file_path(p).exists():
        p = _file_path(p)
    try:
        cache, meta = load_prompt_cache(str(p), return_metadata=True)  # type: ignore[no-untyped-call]
    except Exception as exc:  # mx.load raises bare RuntimeError/ValueError
        raise InvalidRequestError(
            f"cannot read the prompt cache file {p}: {exc}", field="path", provider="mlx"
        ) from exc
    if not isinstance(meta, dict) or meta.get("format") != _FILE_FORMAT:
        raise InvalidRequestError(
            f"{p} is not an abstractcore prompt cache file", field="path", provider="mlx"
        )
    if meta.get("model") != model:
        raise InvalidRequestError(
            f"the prompt cache file {p} was made by model {meta.get('model')!r}, "
            f"not by the loaded model {model!r}",
            field="path",
            provider="mlx",
        )
    try:
        tokens = [int(t) for t in json.loads(meta["tokens"])]
    except (KeyError, ValueError, TypeError) as exc:
        raise InvalidRequestError(
            f"the prompt cache file {p} has no valid token ids", field="path", provider="mlx"
        ) from exc
    ok = len(cache) == num_layers and all(
        type(c) is KVCache and c.keys is not None and c.offset == len(tokens) for c in cache
    )
    if not ok or not tokens:
        raise InvalidRequestError(
            f"the prompt cache file {p} does not match the model's cache layout",
            field="path",
            provider="mlx",
        )
    return tokens, cache
