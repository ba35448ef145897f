"""Products of a few rows in a kernel of our own: a ``cblas_sgemm`` in front of the BLAS.

A decode step of ``r`` sequences multiplies an (r x hidden) activation by every weight matrix
of the model: for SmolLM2-135M ~540 MB of float32 weights per step, read from memory, for
2 x r x 135M flops. MKL and OpenBLAS copy (pack) the weight matrix into a buffer of their
own before multiplying; at a few rows the copy costs as much as the product, and a step at 8
rows took twice as long in products as a step at one row, which only streams the weights.
Measured on this project's Intel machine (2 cores, AVX-512, float32), every product of one
SmolLM2 decode step, each weight read once (the step's own pattern), MKL against this kernel:
19.1 / 18.6 ms at 1 row, 33.9 / 19.2 at 4, 41.9 / 22.7 at 8, 45.1 / 31.8 at 16, 52.0 / 47.4
at 32, 57.4 / 50.9 at 40; 60.9 / 61.6 at 48 and 74.2 / 79.7 at 64, so it stops at 40 rows
(docs/concurrency.md, "Products of a few rows").

``native/small_rows_gemm.c`` defines ``cblas_sgemm``: a row-major ``a . b^T`` with at most
40 rows, ``b`` in ``nn.Linear``'s (out x in) layout, alpha 1 and beta 0 (every product of a
decode step's dense layers, and attention's scores) runs its AVX-512 kernel on the OpenMP
threads, and so does ``a . b`` with ``b`` in the plain (k x n) layout (attention's weights
times values: at 32 rows, 96 products of 3 rows per layer, where MKL's per-call cost
dominates); every other call goes on to the next ``cblas_sgemm`` unchanged (MKL's). Each
output is summed in a fixed order, so a row's outputs are the same bits whatever the batch
around it (tested). It is compiled once per machine with the C compiler and ``-fopenmp``
(kept under ``<cache>/native/``), loaded with ``RTLD_GLOBAL`` before the BLAS, so the
dynamic linker binds MLX's ``cblas_sgemm`` to it.

Where it runs: Linux, a CPU with AVX-512F/DQ and FMA, and a BLAS whose threads are GNU
OpenMP's, so the kernel and the BLAS share one pool of threads instead of two pools
spinning on the same cores: MKL with ``MKL_THREADING_LAYER=GNU`` (blas.py's default where
``libgomp`` exists, which ``-fopenmp`` needs anyway) or OpenBLAS's OpenMP build (blas.py's
first choice of OpenBLAS on such CPUs). OpenBLAS's pthreads build and MKL on Intel's OpenMP
keep their own products (the shim only forwards). ``ABSTRACTCORE_SMALL_ROWS=0`` turns it off.
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
from .cpuinfo import cpu_flags

__all__ = [
    "MAX_ROWS", "SMALL_ROWS_ENV", "computed_products", "connect", "install", "set_enabled",
]  # fmt: skip

log = logging.getLogger(__name__)

#: ``0`` (or off/false/none) leaves every product to the BLAS.
SMALL_ROWS_ENV = "ABSTRACTCORE_SMALL_ROWS"
#: The largest row count the kernel takes (``MAX_ROWS`` in the C source).
MAX_ROWS = 40

_SOURCE = Path(__file__).with_name("native") / "small_rows_gemm.c"
_shim: ctypes.CDLL | None = None
_on = False


def enabled() -> bool:
    """False when ``$ABSTRACTCORE_SMALL_ROWS`` turns the kernel off."""
    value = os.environ.get(SMALL_ROWS_ENV, "1").strip().lower()
    return value not in ("0", "off", "false", "none", "no", "")


def cpu_has_avx512() -> bool:
    """AVX-512F, AVX-512DQ and FMA in /proc/cpuinfo's flags (the C side checks again)."""
    return {"avx512f", "avx512dq", "fma"} <= cpu_flags()


def _compiler() -> str | None:
    return next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)


def _build() -> Path | None:
    """The compiled shim (built once, atomically, keyed by its source and compiler); None
    without a C compiler or when compiling fails."""
    compiler = _compiler()
    if compiler is None:
        log.info("no C compiler: products stay on the BLAS (%s)", _SOURCE.name)
        return None
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + compiler.encode()).hexdigest()[:16]
    target = cache_root() / "native" / f"small_rows_gemm-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=".small_rows_gemm-", suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [compiler, "-O3", "-fopenmp", "-shared", "-fPIC", "-o", partial, str(_SOURCE), "-ldl"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        os.unlink(partial)
        log.warning("compiling %s failed: %s", _SOURCE.name, done.stderr.strip()[-500:])
        return None
    os.replace(partial, target)
    return target


def install() -> bool:
    """Load the shim into the global scope; the caller loads the BLAS next and then calls
    :func:`connect`. True when loaded (the kernel is off until connected)."""
    global _shim
    if _shim is not None:
        return True
    if not enabled() or not cpu_has_avx512():
        return False
    built = _build()
    if built is None:
        return False
    try:
        shim = ctypes.CDLL(str(built), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        log.warning("loading %s failed: %s", built, exc)
        return False
    shim.abstractcore_small_rows_enable.restype = ctypes.c_long
    shim.abstractcore_small_rows_enable(0)
    _shim = shim
    return True


def connect(next_sgemm: int, kernel: bool) -> bool:
    """Send every call the kernel does not take to ``next_sgemm`` (a ``cblas_sgemm``'s
    address), and turn the kernel on when ``kernel`` is true and the CPU has it (False: the
    shim only forwards, e.g. to a BLAS the kernel does not run beside). True when on."""
    global _on
    if _shim is None:
        return False
    supported = bool(_shim.abstractcore_small_rows_init(ctypes.c_void_p(next_sgemm)))
    _on = supported and kernel
    _shim.abstractcore_small_rows_enable(1 if _on else 0)
    return _on


def set_enabled(on: bool) -> None:
    """Turn the kernel on or off for the whole process (benchmarks compare the two)."""
    if _shim is not None and _on:
        _shim.abstractcore_small_rows_enable(1 if on else 0)


def computed_products() -> int | None:
    """Products the kernel computed so far; None when it is not on in this process."""
    if _shim is None or not _on:
        return None
    return int(_shim.abstractcore_small_rows_enable(-1))
