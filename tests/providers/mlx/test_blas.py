"""The Linux BLAS preload. It is process-wide and one-shot, so every case runs in a subprocess."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from abstractcore.providers.mlx.blas import (
    BLAS_ENV,
    _openblas_candidates,
    cpu_vendor,
    mkl_library,
)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the preload is Linux-only"
)

OPENBLAS = sorted(glob.glob("/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0"))
#: The OpenBLAS ``ABSTRACTCORE_BLAS=openblas`` loads: the OpenMP build where the small-rows
#: kernel runs beside it and that build is installed, the pthreads one otherwise.
FIRST_OPENBLAS = _openblas_candidates()[0] if OPENBLAS else None
MKL = mkl_library()
needs_mkl = pytest.mark.skipif(MKL is None, reason="needs the mkl wheel (the `mkl` extra)")

# Preloads (or not), then reports what it loaded, whether OpenBLAS is mapped, a 256x256 matmul,
# a 512^3 matmul's speed and, given a model directory, 10 greedy tokens.
_PROBE = r"""
import json, sys, time, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from abstractcore.providers.mlx.blas import preload_blas
    first, second = preload_blas(), preload_blas()
import mlx.core as mx
a = mx.random.normal((256, 256), key=mx.random.key(0))
b = mx.random.normal((256, 256), key=mx.random.key(1))
small = (a @ b).tolist()
x, y = mx.random.normal((512, 512)), mx.random.normal((512, 512))
mx.eval(x @ y)
start = time.perf_counter()
for _ in range(3):
    mx.eval(x @ y)
gflops = 3 * 2 * 512**3 / (time.perf_counter() - start) / 1e9
tokens = []
if len(sys.argv) > 1:
    from mlx_lm import stream_generate, load
    from mlx_lm.sample_utils import make_sampler
    model, tok = load(sys.argv[1])
    prompt = tok.encode("The three primary colours are")
    greedy = make_sampler(0.0)
    tokens = [r.token for r in stream_generate(model, tok, prompt, max_tokens=10, sampler=greedy)]
print(json.dumps({
    "first": first, "second": second, "warnings": [str(w.message) for w in caught],
    "mapped": "libopenblas" in open("/proc/self/maps").read(),
    "mkl_mapped": "libmkl_rt" in open("/proc/self/maps").read(),
    "info": __import__("abstractcore.providers.mlx.blas", fromlist=["x"]).blas_info(),
    "small": small, "gflops": gflops, "tokens": tokens,
}))
"""


def _probe(env: dict[str, str], *args: str, code: str = _PROBE) -> dict[str, Any]:
    full = {k: v for k, v in os.environ.items() if k != BLAS_ENV} | env
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(not OPENBLAS, reason="needs libopenblas0-pthread (make system-deps)")
def test_same_results_with_and_without_openblas(embedded_model_dir: Path) -> None:
    fast = _probe({BLAS_ENV: "openblas"}, str(embedded_model_dir))
    slow = _probe({BLAS_ENV: "none"}, str(embedded_model_dir))
    assert fast["first"] == fast["second"] == FIRST_OPENBLAS  # idempotent
    assert fast["mapped"] and fast["warnings"] == []
    assert slow["first"] is None and not slow["mapped"] and slow["warnings"] == []
    _assert_same_maths(fast, slow, "OpenBLAS")


def _assert_same_maths(fast: dict[str, Any], slow: dict[str, Any], name: str) -> None:
    """Same maths as the reference BLAS, in another summation order: equal to float32
    rounding (not bit for bit), and the same greedy tokens."""
    for row_fast, row_slow in zip(fast["small"], slow["small"]):
        assert row_fast == pytest.approx(row_slow, rel=1e-5, abs=1e-4)
    assert fast["tokens"] == slow["tokens"] and len(fast["tokens"]) > 4
    print(
        f"\n512^3 float32 matmul: {slow['gflops']:.1f} GFLOP/s reference BLAS, "
        f"{fast['gflops']:.1f} GFLOP/s {name} ({fast['gflops'] / slow['gflops']:.0f}x)"
    )


def test_named_library_is_loaded(tmp_path: Path) -> None:
    if not OPENBLAS:
        pytest.skip("needs libopenblas0-pthread")
    code = (
        "import json; from abstractcore.providers.mlx.blas import preload_blas; "
        "print(json.dumps(preload_blas()))"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        env=os.environ | {BLAS_ENV: OPENBLAS[0]},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == OPENBLAS[0]


_WARN_ONCE = r"""
import json, warnings
from abstractcore.providers.mlx import blas
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    results = [blas.preload_blas(), blas.preload_blas()]
warned = [(w.category.__name__, str(w.message)) for w in caught]
print(json.dumps({"results": results, "warnings": warned}))
"""


def test_missing_library_warns_once_with_the_fix() -> None:
    got = _probe({BLAS_ENV: "/nonexistent/libopenblas.so.0"}, code=_WARN_ONCE)
    assert got["results"] == [None, None]
    [(category, message)] = got["warnings"]
    assert category == "BlasWarning"
    assert "apt-get install libopenblas0-pthread" in message and BLAS_ENV in message


def test_too_late_after_mlx_import_warns() -> None:
    code = "import mlx.core\n" + _WARN_ONCE
    got = _probe({}, code=code)
    assert got["results"] == [None, None]
    [(category, message)] = got["warnings"]
    assert category == "BlasWarning" and "before importing mlx" in message


def test_package_import_does_not_import_mlx() -> None:
    code = (
        "import sys, abstractcore.providers.mlx, abstractcore.providers.mlx.loading; "
        "print(sys.modules.get('mlx') is None)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "True", done.stderr


_GEMV = r"""
import json, numpy as np
from abstractcore.providers.mlx import blas
blas.preload_blas()
import mlx.core as mx
rng = np.random.default_rng(0)
x, w, bias = rng.standard_normal((1, 96)), rng.standard_normal((80, 96)), rng.standard_normal(80)
xs, ws, bs = (mx.array(a.astype(np.float32)) for a in (x, w, bias))
wt = mx.array(np.ascontiguousarray(w.T).astype(np.float32))
got = {
    "transposed": (xs @ ws.T).tolist(),      # nn.Linear's layout: b transposed
    "plain": (xs @ wt).tolist(),             # b as stored
    "addmm": mx.addmm(bs, xs, ws.T).tolist(),  # beta = 1: the bias is kept
    "column": (xs.T.T @ wt).tolist(),
    "two_rows": (mx.concatenate([xs, xs]) @ ws.T).tolist(),  # sgemm, untouched
}
print(json.dumps({"got": got, "want": (x @ w.T).tolist(), "bias": (x @ w.T + bias).tolist(),
                  "info": blas.blas_info()}))
"""


@pytest.mark.skipif(not OPENBLAS, reason="needs libopenblas0-pthread (make system-deps)")
def test_one_row_products_go_to_sgemv_with_the_same_values() -> None:
    from abstractcore.providers.mlx.blas_gemv import GEMV_ENV

    # the pthreads build: beside the OpenMP one, the small-rows kernel takes one-row products
    on = _probe({BLAS_ENV: OPENBLAS[0]}, code=_GEMV)
    off = _probe({BLAS_ENV: OPENBLAS[0], GEMV_ENV: "0"}, code=_GEMV)
    assert on["info"]["gemv_forwarded"] >= 4  # the four one-row products above
    assert off["info"]["gemv_forwarded"] is None  # not installed: OpenBLAS alone
    for got in (on["got"], off["got"]):
        for name in ("transposed", "plain", "column"):
            assert got[name][0] == pytest.approx(on["want"][0], rel=1e-4, abs=1e-4), name
        assert got["addmm"][0] == pytest.approx(on["bias"][0], rel=1e-4, abs=1e-4)
        assert got["two_rows"][1] == pytest.approx(on["want"][0], rel=1e-4, abs=1e-4)


@needs_mkl
def test_mkl_gives_the_same_tokens_without_the_gemv_forwarding(embedded_model_dir: Path) -> None:
    mkl = _probe({BLAS_ENV: "mkl"}, str(embedded_model_dir))
    slow = _probe({BLAS_ENV: "none"}, str(embedded_model_dir))
    assert mkl["first"] == mkl["second"] == MKL and mkl["warnings"] == []
    assert mkl["mkl_mapped"] and not mkl["mapped"]  # MKL alone, no OpenBLAS beside it
    info = mkl["info"]
    assert info["kind"] == "mkl" and info["library"] == MKL
    assert info["mkl_threading_layer"] in ("GNU", "INTEL")
    assert info["gemv_forwarded"] is None  # MKL runs one-row products as gemv itself
    _assert_same_maths(mkl, slow, "MKL")


@needs_mkl
def test_default_is_mkl_on_intel_and_openblas_elsewhere() -> None:
    got = _probe({}, code=_WARN_ONCE)
    if cpu_vendor() == "GenuineIntel":
        assert got["results"] == [MKL, MKL]
    elif OPENBLAS:
        assert got["results"] == [FIRST_OPENBLAS, FIRST_OPENBLAS]
    assert got["warnings"] == []


@needs_mkl
def test_the_caller_s_mkl_threading_layer_wins() -> None:
    code = (
        "import json; from abstractcore.providers.mlx import blas; blas.preload_blas(); "
        "print(json.dumps(blas.blas_info()))"
    )
    got = _probe({BLAS_ENV: "mkl", "MKL_THREADING_LAYER": "SEQUENTIAL"}, code=code)
    assert got["kind"] == "mkl" and got["mkl_threading_layer"] == "SEQUENTIAL"


def test_asking_for_mkl_without_it_warns_with_the_fix() -> None:
    if MKL is not None:
        pytest.skip("mkl is installed here")
    got = _probe({BLAS_ENV: "mkl"}, code=_WARN_ONCE)
    assert got["results"] == [None, None]
    [(category, message)] = got["warnings"]
    assert category == "BlasWarning" and "abstractcore[mkl]" in message
