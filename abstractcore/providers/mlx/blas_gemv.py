"""One-row float32 products as matrix-vector products: a ``cblas_sgemm`` in front of OpenBLAS.

MLX's CPU backend computes every float32 product with ``cblas_sgemm``
(``mlx/backend/cpu/gemms/cblas.cpp``), also the (1 x hidden) by (hidden x out) products of a
decode step of one sequence. OpenBLAS's sgemm packs the weight matrix into a buffer before it
multiplies, so at one row it reads each weight about three times; its ``cblas_sgemv`` reads
it once. OpenBLAS forwards such calls itself only from 0.3.27 (``GEMM_GEMV_FORWARD``);
Debian 12 ships 0.3.21. Measured on this project's 2-core machine (docs/concurrency.md, "One
row: matrix-vector products"): ``mlx_lm.generate`` on SmolLM2-135M decodes 13.7 tok/s with
sgemm and 23.6 tok/s with the forwarding, alternating in one process, the same greedy text.

``native/gemv_forward.c`` defines ``cblas_sgemm``: a row-major call with M == 1 goes to
OpenBLAS's ``cblas_sgemv``, every other call to OpenBLAS's ``cblas_sgemm`` unchanged. It is
compiled once per machine with the C compiler (kept under ``<cache>/native/``) and loaded
with ``RTLD_GLOBAL`` *before* OpenBLAS joins the global scope, so the dynamic linker binds
MLX's ``cblas_sgemm`` to it. It knows OpenBLAS's functions from OpenBLAS's own handle, not
from symbol lookup. Like the BLAS preload it is process-wide, Linux-only (macOS has
Accelerate), and on by default; ``ABSTRACTCORE_GEMV=0`` leaves OpenBLAS alone.

The forwarding changes the summation order of one-row products (a dot product per output
instead of sgemm's blocks), so a row decoded alone and the same row inside a larger batch
may round differently in the last bits, as they would with any two BLAS kernels; the parity
tests hold the engine's greedy text to ``mlx_lm.generate``'s, which runs on the same BLAS.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .cache_root import cache_root

__all__ = ["GEMV_ENV", "forwarded_products", "install", "set_forwarding", "sgemm_address"]

log = logging.getLogger(__name__)

#: ``0`` (or off/false/none) keeps every product on OpenBLAS's sgemm.
GEMV_ENV = "ABSTRACTCORE_GEMV"

_SOURCE = Path(__file__).with_name("native") / "gemv_forward.c"
_shim: ctypes.CDLL | None = None


def enabled() -> bool:
    """False when ``$ABSTRACTCORE_GEMV`` turns the forwarding off."""
    value = os.environ.get(GEMV_ENV, "1").strip().lower()
    return value not in ("0", "off", "false", "none", "no", "")


def _compiler() -> str | None:
    return next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)


def _build() -> Path | None:
    """The compiled shim (built once, atomically, keyed by its source); None without a C
    compiler or when compiling fails."""
    compiler = _compiler()
    if compiler is None:
        log.info("no C compiler: one-row products stay on sgemm (%s)", _SOURCE.name)
        return None
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + compiler.encode()).hexdigest()[:16]
    target = cache_root() / "native" / f"gemv_forward-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=".gemv_forward-", suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [compiler, "-O2", "-shared", "-fPIC", "-o", partial, str(_SOURCE), "-ldl"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        os.unlink(partial)
        log.warning("compiling %s failed: %s", _SOURCE.name, done.stderr.strip()[-500:])
        return None
    os.replace(partial, target)
    return target


def install(blas_path: str) -> bool:
    """Put the forwarding ``cblas_sgemm`` in front of the BLAS at ``blas_path``, which must not
    be loaded globally yet (the caller loads it with RTLD_GLOBAL next). True when installed."""
    global _shim
    if _shim is not None:
        return True
    if not enabled():
        return False
    try:
        blas = ctypes.CDLL(blas_path, mode=ctypes.RTLD_LOCAL)
        sgemm, sgemv = blas.cblas_sgemm, blas.cblas_sgemv
    except (OSError, AttributeError):
        return False  # not loadable, or not a CBLAS: the caller's search goes on
    built = _build()
    if built is None:
        return False
    try:
        shim = ctypes.CDLL(str(built), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        log.warning("loading %s failed: %s", built, exc)
        return False
    shim.abstractcore_gemv_init(ctypes.cast(sgemm, ctypes.c_void_p),
                                ctypes.cast(sgemv, ctypes.c_void_p))  # fmt: skip
    shim.abstractcore_gemv_forwarding.restype = ctypes.c_long
    _shim = shim
    return True


def set_forwarding(on: bool) -> None:
    """Turn the forwarding on or off for the whole process (benchmarks compare the two)."""
    if _shim is not None:
        _shim.abstractcore_gemv_forwarding(1 if on else 0)


def forwarded_products() -> int | None:
    """One-row products forwarded to sgemv so far; None when the shim is not installed."""
    if _shim is None:
        return None
    return int(_shim.abstractcore_gemv_forwarding(-1))


def sgemm_address() -> int | None:
    """The address of the shim's ``cblas_sgemm``; None when it is not installed."""
    if _shim is None:
        return None
    return ctypes.cast(_shim.cblas_sgemm, ctypes.c_void_p).value
