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
  second (docs/concurrency.md, "The BLAS"). It runs on AMD CPUs too, slower there than
  OpenBLAS (below), so the default stays OpenBLAS on them. MKL's threading layer is
  GNU OpenMP when ``libgomp`` is present (Intel's otherwise); ``MKL_THREADING_LAYER`` wins.
- **OpenBLAS** otherwise, with blas_gemv.py's ``cblas_sgemm`` in front of it, which runs
  one-row products as matrix-vector products. MKL goes without it: its own sgemm at one row
  was as fast (a step's products 6.2 ms, against 6.1 for OpenBLAS with the forwarding). Its
  OpenMP build (``libopenblas0-openmp``) comes first where blas_small_rows.py's kernel can run
  beside it (AVX-512), its pthreads build (``libopenblas0-pthread``) first elsewhere. On AMD's
  AVX-512 cores, which OpenBLAS 0.3.21 does not know, ``OPENBLAS_CORETYPE`` defaults to
  its AVX-512 kernels (:func:`_prepare_openblas`).

Measured on a Zen 5 host (2 cores), the engine alone at 1 / 8 / 32 streams (medians of 3-5
alternated runs): OpenBLAS's pthreads build on its AVX2 kernels 38.6 / 72.3 / 120.9 tok/s, on
its AVX-512 kernels 34.8 / 78.3 / 154.9, its OpenMP build on them with the small-rows kernel
37.4 / 133.2 / 180.7; MKL with the kernel 34.7-39.8 / 128-129 / 168-173 in two runs
(docs/concurrency.md, "OpenBLAS on AMD's AVX-512 cores"), its large products at half
OpenBLAS's AVX-512 rate there; so MKL stays Intel's default.
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
from .cpuinfo import cpu_flags, cpu_vendor

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
    "/usr/lib64/libopenblaso.so.0",  # Fedora / RHEL (OpenMP build)
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


#: What OpenBLAS's SkylakeX kernels need (its own check for that core).
_SKYLAKEX_FLAGS = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})


def _openblas_candidates() -> list[str]:
    found = [p for pattern in _SEARCH for p in sorted(glob.glob(pattern))]
    if blas_small_rows.enabled() and blas_small_rows.cpu_has_avx512():
        # The small-rows kernel runs beside an OpenMP build only (one pool of threads): that
        # build first. On a Zen 5 host it decoded 133 against 78 tok/s at 8 streams
        # (docs/concurrency.md, "OpenBLAS on AMD's AVX-512 cores").
        found.sort(key=lambda path: not _is_openmp_build(path))
    return found + list(_SONAMES)


def _is_openmp_build(path: str) -> bool:
    """Debian's and Fedora's OpenMP builds of OpenBLAS, by their paths."""
    return "openblas-openmp" in path or os.path.basename(path).startswith("libopenblaso.")


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
    else:
        _prepare_openblas()
    # Products of a few rows (blas_small_rows.py): its cblas_sgemm goes first in the global
    # scope; it is turned on below only where the BLAS's threads are GNU OpenMP's.
    blas_small_rows.install()
    if not mkl:
        # One-row products forwarded to sgemv (blas_gemv.py): its cblas_sgemm must be in the
        # global scope before OpenBLAS's own.
        blas_gemv.install(candidate)
    try:
        handle = ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return None
    # Where the small-rows shim sends the calls it does not take (the sgemv forwarding, or the
    # BLAS itself).
    after = blas_gemv.sgemm_address() or ctypes.cast(handle.cblas_sgemm, ctypes.c_void_p).value
    if after is not None:
        blas_small_rows.connect(after, kernel=_on_gnu_openmp(handle, mkl))
    return handle


def _on_gnu_openmp(handle: ctypes.CDLL, mkl: bool) -> bool:
    """True when the loaded BLAS runs its threads on GNU OpenMP: MKL on its GNU layer, or an
    OpenMP build of OpenBLAS (``openblas_get_parallel()`` is 2; GNU's is the only OpenMP
    runtime Debian's and Fedora's builds link)."""
    if mkl:
        return _mkl_on_gnu_openmp()
    try:
        get_parallel = handle.openblas_get_parallel
    except AttributeError:
        return False
    get_parallel.restype = ctypes.c_int
    return int(get_parallel()) == 2


def _prepare_openblas() -> None:
    """OpenBLAS 0.3.21 (Debian 12's) does not know AMD's AVX-512 cores (Zen 4 and 5): it runs
    them on its AVX2 ("Haswell") kernels. Its AVX-512 ones ("SkylakeX") need AVX-512F, CD, BW,
    DQ and VL, which those cores have; measured on a Zen 5 host, 1024^3 went from 226-232 to
    423-429 GFLOP/s (docs/concurrency.md, "OpenBLAS on AMD's AVX-512 cores"). ``OPENBLAS_CORETYPE``
    set by the user wins; Intel's AVX-512 cores are detected by OpenBLAS itself."""
    if cpu_vendor() == "AuthenticAMD" and _SKYLAKEX_FLAGS <= cpu_flags():
        os.environ.setdefault("OPENBLAS_CORETYPE", "SKYLAKEX")


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
    (``small_rows_products``: None when it is not on), and OpenBLAS's kernels (``core``, e.g.
    ``SkylakeX``; None for other BLAS libraries)."""
    kind = None
    if _loaded is not None:
        kind = "mkl" if is_mkl(_loaded) else "openblas" if "openblas" in _loaded else "other"
    return {
        "library": _loaded,
        "kind": kind,
        "mkl_threading_layer": os.environ.get("MKL_THREADING_LAYER") if kind == "mkl" else None,
        "gemv_forwarded": blas_gemv.forwarded_products(),
        "small_rows_products": blas_small_rows.computed_products(),
        "core": _openblas_core(),
    }


def _openblas_core() -> str | None:
    """``openblas_get_corename()`` of the loaded library: the kernels it picked for this CPU."""
    corename = getattr(_handle, "openblas_get_corename", None)
    if corename is None:
        return None
    corename.restype = ctypes.c_char_p
    name = corename()
    return name.decode("ascii", "replace") if name else None
