"""Load an optimized system BLAS into the process before MLX's CPU backend binds its own.

On Linux, ``mlx[cpu]`` ships the reference BLAS: float32 matmuls run ~30x slower than with
OpenBLAS (docs/architecture.md, "The machine under it"). Loading OpenBLAS with
``RTLD_GLOBAL`` *before the first ``import mlx``* makes the dynamic linker resolve MLX's
``cblas_*``/``sgemm_`` symbols to it. The preload is process-wide and cannot be undone, so
it happens at most once; the MLX engine thread calls :func:`preload_blas` before it imports
MLX, as do the loading helpers. In front of the BLAS goes blas_gemv.py's ``cblas_sgemm``,
which runs one-row products as matrix-vector products.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
import threading
import warnings

from . import blas_gemv

__all__ = ["BLAS_ENV", "BlasWarning", "blas_info", "preload_blas"]

#: Names a BLAS library to load instead of the search; ``none`` disables the preload.
BLAS_ENV = "ABSTRACTCORE_BLAS"

_DISABLED = ("none", "off", "0", "false", "")
_SEARCH = (
    "/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0",  # Debian / Ubuntu
    "/usr/lib/*-linux-gnu/openblas-openmp/libopenblas.so.0",
    "/usr/lib64/libopenblasp.so.0",  # Fedora / RHEL (pthreads build)
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",  # Arch, Alpine
    "/usr/local/lib/libopenblas.so.0",
)
_SONAMES = ("libopenblas.so.0", "libopenblasp.so.0", "libopenblas.so")
_FIX = "install OpenBLAS (Debian/Ubuntu: `apt-get install libopenblas0-pthread`) or set " + BLAS_ENV

_lock = threading.Lock()
_done = False
_loaded: str | None = None
_handle: ctypes.CDLL | None = None  # kept alive for the life of the process


class BlasWarning(RuntimeWarning):
    """MLX will run on the slow reference BLAS (none found, or MLX was imported first)."""


def _candidates() -> list[str]:
    env = os.environ.get(BLAS_ENV)
    if env is not None:
        return [] if env.strip().lower() in _DISABLED else [env]
    paths = [p for pattern in _SEARCH for p in sorted(glob.glob(pattern))]
    return paths + list(_SONAMES)


def preload_blas() -> str | None:
    """Load OpenBLAS (or ``$ABSTRACTCORE_BLAS``) with RTLD_GLOBAL; returns what was loaded.

    Must run before MLX is imported anywhere in the process; idempotent and thread-safe.
    Returns None off Linux, when disabled, when nothing was found (after one warning), or when
    MLX was already imported (after one warning that it is too late).
    """
    global _done, _loaded, _handle
    with _lock:
        if _done:
            return _loaded
        _done = True
        if not sys.platform.startswith("linux"):
            return None  # macOS has Accelerate; MLX's Metal/CPU builds use it already
        env = os.environ.get(BLAS_ENV)
        if env is not None and env.strip().lower() in _DISABLED:
            return None
        if "mlx.core" in sys.modules:
            warnings.warn(
                "mlx was imported before abstractcore could load an optimized BLAS; MLX on CPU "
                "will use the slow reference BLAS. Import abstractcore's MLX provider (or call "
                "abstractcore.providers.mlx.blas.preload_blas()) before importing mlx.",
                BlasWarning,
                stacklevel=2,
            )
            return None
        tried = _candidates()
        for candidate in tried:
            # One-row products forwarded to sgemv (blas_gemv.py): its cblas_sgemm must be in
            # the global scope before the BLAS's own.
            blas_gemv.install(candidate)
            try:
                _handle = ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            _loaded = candidate
            return _loaded
        what = f"{BLAS_ENV}={env!r} could not be loaded" if env is not None else "no OpenBLAS found"
        warnings.warn(
            f"{what}; MLX on CPU will be ~30x slower. Fix: {_FIX}.", BlasWarning, stacklevel=2
        )
        return None


def blas_info() -> dict[str, object]:
    """What the preload did: the library, and the one-row products forwarded to sgemv
    (``gemv_forwarded``: None when the forwarding is not installed)."""
    return {
        "library": _loaded,
        "gemv_forwarded": blas_gemv.forwarded_products(),
    }
