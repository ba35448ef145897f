"""Which OpenBLAS the preload picks and which of its kernels it runs: the OpenMP build first
where the small-rows kernel can run beside it, and the AVX-512 ("SkylakeX") kernels on AMD's
AVX-512 cores, which OpenBLAS 0.3.21 runs on its AVX2 ones."""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import subprocess
import sys

import pytest

from abstractcore.providers.mlx import blas, blas_small_rows
from abstractcore.providers.mlx.blas import BLAS_ENV

CORETYPE = "OPENBLAS_CORETYPE"
AVX512_AMD = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "fma", "avx2"}
PTHREADS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"
OPENMP = "/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0"


@pytest.fixture
def no_coretype(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CORETYPE, raising=False)


@pytest.mark.usefixtures("no_coretype")
def test_amd_avx512_cores_get_openblas_s_avx512_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blas, "cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setattr(blas, "cpu_flags", lambda: frozenset(AVX512_AMD))
    blas._prepare_openblas()
    assert os.environ[CORETYPE] == "SKYLAKEX"


@pytest.mark.usefixtures("no_coretype")
@pytest.mark.parametrize(
    ("vendor", "flags"),
    [
        ("GenuineIntel", AVX512_AMD),  # OpenBLAS detects Intel's AVX-512 cores itself
        ("AuthenticAMD", {"avx2", "fma"}),  # Zen 1-3: AVX2 is what they have
        ("AuthenticAMD", AVX512_AMD - {"avx512vl"}),  # short of what SkylakeX's kernels need
    ],
)
def test_other_cpus_keep_openblas_s_own_choice(
    monkeypatch: pytest.MonkeyPatch, vendor: str, flags: set[str]
) -> None:
    monkeypatch.setattr(blas, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(blas, "cpu_flags", lambda: frozenset(flags))
    blas._prepare_openblas()
    assert CORETYPE not in os.environ


def test_the_user_s_coretype_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CORETYPE, "Haswell")
    monkeypatch.setattr(blas, "cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setattr(blas, "cpu_flags", lambda: frozenset(AVX512_AMD))
    blas._prepare_openblas()
    assert os.environ[CORETYPE] == "Haswell"


def _fake_installs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both Debian builds installed, whatever this machine has."""
    installed = [PTHREADS, OPENMP]
    monkeypatch.setattr(glob, "glob", lambda pattern: fnmatch.filter(installed, pattern))


def test_the_openmp_build_comes_first_where_the_kernel_can_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_installs(monkeypatch)
    monkeypatch.delenv(blas_small_rows.SMALL_ROWS_ENV, raising=False)
    monkeypatch.setattr(blas_small_rows, "cpu_has_avx512", lambda: True)
    assert blas._openblas_candidates()[:2] == [OPENMP, PTHREADS]


@pytest.mark.parametrize("why", ["no AVX-512", "kernel switched off"])
def test_the_pthreads_build_comes_first_otherwise(
    monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    _fake_installs(monkeypatch)
    monkeypatch.setattr(blas_small_rows, "cpu_has_avx512", lambda: why != "no AVX-512")
    monkeypatch.setenv(blas_small_rows.SMALL_ROWS_ENV, "0" if why == "kernel switched off" else "1")
    assert blas._openblas_candidates()[:2] == [PTHREADS, OPENMP]


_CORE = (
    "import json; from abstractcore.providers.mlx import blas; blas.preload_blas(); "
    "print(json.dumps(blas.blas_info()))"
)


def _info(env: dict[str, str]) -> dict[str, object]:
    full = {k: v for k, v in os.environ.items() if k not in (BLAS_ENV, CORETYPE)} | env
    done = subprocess.run(
        [sys.executable, "-c", _CORE], env=full, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    info: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return info


needs_openblas = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not glob.glob(PTHREADS),
    reason="needs Debian's libopenblas0-pthread on x86_64",
)


@needs_openblas
def test_blas_info_names_openblas_s_kernels_and_the_loaded_ones_follow_the_choice() -> None:
    default = _info({BLAS_ENV: PTHREADS})
    chosen = _info({BLAS_ENV: PTHREADS, CORETYPE: "Haswell"})
    assert default["kind"] == chosen["kind"] == "openblas"
    assert chosen["core"] == "Haswell"  # the user's choice, as OpenBLAS reports it
    if blas.cpu_vendor() == "AuthenticAMD" and blas._SKYLAKEX_FLAGS <= blas.cpu_flags():
        assert default["core"] == "SkylakeX"
    else:
        assert isinstance(default["core"], str) and default["core"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the preload is Linux-only")
def test_mkl_has_no_openblas_core() -> None:
    if blas.mkl_library() is None:
        pytest.skip("needs the mkl wheel (the `mkl` extra)")
    assert _info({BLAS_ENV: "mkl"})["core"] is None
