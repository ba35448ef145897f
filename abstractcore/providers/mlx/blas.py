"""Load an optimized BLAS into the process before MLX's CPU backend binds its own.

On Linux, ``mlx[cpu]`` ships the reference BLAS: float32 matmuls run ~30x slower than with
OpenBLAS (docs/architecture.md, "The machine under it"). Loading a BLAS with ``RTLD_GLOBAL``
*before the first ``import mlx``* makes the dynamic linker resolve MLX's ``cblas_*``/``sgemm_``
symbols to it. The preload is process-wide and cannot be undone, so it happens at most once;
the MLX engine thread calls :func:`preload_blas` before it imports MLX, as do the loading
helpers.

Which BLAS (``$ABSTRACTCORE_BLAS``: ``mkl``, ``openblas``, a library's path, or ``none``):

- **Intel's MKL** when the ``mkl`` wheel is installed (the ``mkl`` extra) and the CPU is an
  Intel one. Its sgemm does not pack the whole weight matrix for a few rows, which OpenBLAS
  0.3.21's does: on this project's Intel machines a SmolLM2 decode step at 8 / 32 rows took
  88 / 171 ms against OpenBLAS's 106 / 184, and the engine decoded 7-27% more tokens per
  second (docs/concurrency.md, "The BLAS"). It runs on AMD CPUs too,
  but is not measured there, so the default stays OpenBLAS on them. MKL's threading layer is
  GNU OpenMP when ``libgomp`` is present (Intel's otherwise); ``MKL_THREADING_LAYER`` wins.
- **OpenBLAS** otherwise (the system's ``libopenblas0-pthread``), with blas_gemv.py's
  ``cblas_sgemm`` in front of it, which runs one-row products as matrix-vector products. MKL
  goes without it: its own sgemm at one row was as fast (a step's products 6.2 ms, against
  6.1 for OpenBLAS with the forwarding).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import site
import sys
import threading
import warnings

from . import blas_gemv, blas_small_rows

__all__ = [
    "BLAS_ENV",
    "BlasWarning",
    "blas_info",
    "cpu_vendor",
    "is_mkl",
    "mkl_library",
    "preload_blas",
]

#: ``mkl``, ``openblas``, a library to load, or ``none`` (no preload); unset: see above.
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
_FIX = (
    "install OpenBLAS (Debian/Ubuntu: `apt-get install libopenblas0-pthread`) or MKL "
    f"(`pip install 'abstractcore[mkl]'`), or set {BLAS_ENV}"
)

_lock = threading.Lock()
_done = False
_loaded: str | None = None
_handle: ctypes.CDLL | None = None  # kept alive for the life of the process


class BlasWarning(RuntimeWarning):
    """MLX will run on the slow reference BLAS (none found, or MLX was imported first)."""


def mkl_library() -> str | None:
    """``libmkl_rt`` from the ``mkl`` wheel (it installs into the environment's ``lib``)."""
    for prefix in (sys.prefix, site.getuserbase()):
        found = sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")))
        if found:
            return found[-1]
    return None


def cpu_vendor() -> str | None:
    """``vendor_id`` of /proc/cpuinfo (``GenuineIntel``, ``AuthenticAMD``), None if unknown."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _openblas_candidates() -> list[str]:
    return [p for pattern in _SEARCH for p in sorted(glob.glob(pattern))] + list(_SONAMES)


def _candidates() -> list[str]:
    env = os.environ.get(BLAS_ENV)
    if env is None:
        mkl = mkl_library() if cpu_vendor() == "GenuineIntel" else None
        return ([mkl] if mkl else []) + _openblas_candidates()
    choice = env.strip()
    if choice.lower() in _DISABLED:
        return []
    if choice.lower() == "openblas":
        return _openblas_candidates()
    if choice.lower() == "mkl":
        mkl = mkl_library()
        return [mkl] if mkl else []
    return [choice]


def is_mkl(path: str | None) -> bool:
    """True when ``path`` names Intel's MKL runtime library."""
    return path is not None and "libmkl_rt" in os.path.basename(path)


def _prepare_mkl() -> None:
    """MKL picks its OpenMP runtime when loaded: GNU's where the system has it (no second
    OpenMP runtime in the process), Intel's from the ``intel-openmp`` wheel otherwise."""
    layer = "GNU" if ctypes.util.find_library("gomp") else "INTEL"
    os.environ.setdefault("MKL_THREADING_LAYER", layer)


def _load(candidate: str) -> ctypes.CDLL | None:
    mkl = is_mkl(candidate)
    if mkl:
        _prepare_mkl()
        if _mkl_on_gnu_openmp():
            # Products of a few rows (blas_small_rows.py): its cblas_sgemm goes first in the
            # global scope. It shares GNU OpenMP's threads with MKL, so only beside that.
            blas_small_rows.install()
    else:
        # One-row products forwarded to sgemv (blas_gemv.py): its cblas_sgemm must be in the
        # global scope before OpenBLAS's own.
        blas_gemv.install(candidate)
    try:
        handle = ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return None
    # Where the small-rows shim sends the calls it does not take; after a failed MKL load it
    # may sit in front of OpenBLAS, which it only forwards to.
    after = blas_gemv.sgemm_address() or ctypes.cast(handle.cblas_sgemm, ctypes.c_void_p).value
    if after is not None:
        blas_small_rows.connect(after, kernel=mkl and _mkl_on_gnu_openmp())
    return handle


def _mkl_on_gnu_openmp() -> bool:
    return os.environ.get("MKL_THREADING_LAYER", "").strip().upper() == "GNU"


def preload_blas() -> str | None:
    """Load MKL or OpenBLAS (or ``$ABSTRACTCORE_BLAS``) with RTLD_GLOBAL; returns what was
    loaded.

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
        for candidate in _candidates():
            handle = _load(candidate)
            if handle is not None:
                _handle, _loaded = handle, candidate
                return _loaded
        what = f"{BLAS_ENV}={env!r} could not be loaded" if env is not None else "no BLAS found"
        warnings.warn(
            f"{what}; MLX on CPU will be ~30x slower. Fix: {_FIX}.", BlasWarning, stacklevel=2
        )
        return None


def blas_info() -> dict[str, object]:
    """What the preload did: the library, which kind it is (``mkl``, ``openblas``, ``other``),
    MKL's threading layer, the one-row products forwarded to sgemv (``gemv_forwarded``: None
    when the forwarding is not installed) and the products of blas_small_rows.py's kernel
    (``small_rows_products``: None when it is not on)."""
    kind = None
    if _loaded is not None:
        kind = "mkl" if is_mkl(_loaded) else "openblas" if "openblas" in _loaded else "other"
    return {
        "library": _loaded,
        "kind": kind,
        "mkl_threading_layer": os.environ.get("MKL_THREADING_LAYER") if kind == "mkl" else None,
        "gemv_forwarded": blas_gemv.forwarded_products(),
        "small_rows_products": blas_small_rows.computed_products(),
    }
