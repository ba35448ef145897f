"""blas_small_rows.py's kernel for products of a few rows, beside each BLAS whose threads are GNU
OpenMP's: MKL (the `mkl` extra) and OpenBLAS's OpenMP build. It is installed with the
process-wide BLAS preload, so every case runs in a subprocess."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from abstractcore.providers.mlx.blas import BLAS_ENV, mkl_library
from abstractcore.providers.mlx.blas_small_rows import MAX_ROWS, SMALL_ROWS_ENV, cpu_has_avx512

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the preload is Linux-only"),
    pytest.mark.skipif(not cpu_has_avx512(), reason="the kernel needs AVX-512F/DQ and FMA"),
]

OPENBLAS_OPENMP = sorted(glob.glob("/usr/lib/*-linux-gnu/openblas-openmp/libopenblas.so.0"))
OPENBLAS_PTHREADS = sorted(glob.glob("/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0"))


@pytest.fixture(
    params=[
        pytest.param(
            "mkl",
            marks=pytest.mark.skipif(mkl_library() is None, reason="needs the `mkl` extra"),
        ),
        pytest.param(
            OPENBLAS_OPENMP[0] if OPENBLAS_OPENMP else "openblas-openmp",
            marks=pytest.mark.skipif(not OPENBLAS_OPENMP, reason="needs libopenblas0-openmp"),
            id="openblas-openmp",
        ),
    ]
)
def blas_choice(request: pytest.FixtureRequest) -> str:
    """``$ABSTRACTCORE_BLAS`` for the case: a BLAS the kernel runs beside."""
    return str(request.param)


# Products the kernel takes (nn.Linear's layout, 1..MAX_ROWS rows; k and n with and without
# the kernel's tails; activations sliced from rows longer than k) and products it leaves to
# the BLAS, each against numpy in float64, with the kernel's count before and after each.
_VALUES = r"""
import json, sys
import numpy as np
from abstractcore.providers.mlx import blas
blas.preload_blas()
import mlx.core as mx
rng = np.random.default_rng(0)
def count():
    return blas.blas_info()["small_rows_products"]
out = {"info": blas.blas_info(), "taken": [], "left": []}
for m in (1, 2, 3, 4, 5, 7, 8, 13, 32, int(sys.argv[1])):
    for n, k in ((80, 96), (7, 33), (1536, 576), (5, 17), (13, 600), (64, 128), (130, 9)):
        x, w = rng.standard_normal((m, k)), rng.standard_normal((n, k))
        xs = mx.array(x.astype(np.float32))
        before = count()
        got = np.array(xs @ mx.array(w.astype(np.float32)).T)  # b^T: nn.Linear's layout
        out["taken"].append([m, n, k, float(np.abs(got - x @ w.T).max()), before, count()])
        before = count()
        got = np.array(xs @ mx.array(np.ascontiguousarray(w.T).astype(np.float32)))  # plain b
        out["taken"].append([m, n, k, float(np.abs(got - x @ w.T).max()), before, count()])
x, w = rng.standard_normal((4, 96)), rng.standard_normal((80, 96))
xs, ws = mx.array(x.astype(np.float32)), mx.array(w.astype(np.float32))
narrow = mx.array(np.ascontiguousarray(w[:, :50]).astype(np.float32))
before = count()
got = np.array(xs[:, :50] @ narrow.T)  # rows of 96 values, k = 50
err = float(np.abs(got - x[:, :50] @ w[:, :50].T).max())
out["taken"].append([4, 80, 50, err, before, count()])
bias = rng.standard_normal(80)
big = rng.standard_normal((int(sys.argv[1]) + 1, 96))
left = {
    "addmm": (lambda: mx.addmm(mx.array(bias.astype(np.float32)), xs, ws.T), x @ w.T + bias),
    # a stored as columns: MLX passes it transposed
    "transposed_a": (lambda: mx.array(np.ascontiguousarray(x.T).astype(np.float32)).T @ ws.T,
                     x @ w.T),
    "too_many_rows": (lambda: mx.array(big.astype(np.float32)) @ ws.T, big @ w.T),
}
for name, (run, want) in left.items():
    before = count()
    got = np.array(run())
    out["left"].append([name, float(np.abs(got - want).max()), before, count()])
print(json.dumps(out))
"""

# Each row of an m-row product against the same row multiplied alone, bit for bit, for both
# layouts of b.
_BATCH = r"""
import json
import numpy as np
from abstractcore.providers.mlx import blas
blas.preload_blas()
import mlx.core as mx
rng = np.random.default_rng(1)
w = mx.array(rng.standard_normal((1536, 576)).astype(np.float32))
x = mx.array(rng.standard_normal((40, 576)).astype(np.float32))
values = mx.array(rng.standard_normal((576, 100)).astype(np.float32))
differing = []
for name, b in (("transposed", w.T), ("plain", values)):
    alone = [np.array(x[i:i + 1] @ b)[0] for i in range(40)]
    for m in range(1, 41):
        batch = np.array(x[:m] @ b)
        differing += [[name, m, i] for i in range(m) if not np.array_equal(batch[i], alone[i])]
print(json.dumps({"differing": differing, "info": blas.blas_info()}))
"""

# One one-row product, then what the preload did and whether the shim is in the process.
_ONE_ROW = r"""
import json
from abstractcore.providers.mlx import blas, blas_small_rows
blas.preload_blas()
import mlx.core as mx
mx.eval(mx.ones((1, 96)) @ mx.ones((80, 96)).T)
print(json.dumps(blas.blas_info() | {"shim_loaded": blas_small_rows._shim is not None}))
"""

# Greedy tokens of the embedded model, and what the preload did.
_TOKENS = r"""
import json, sys
from abstractcore.providers.mlx import blas
blas.preload_blas()
from mlx_lm import load, stream_generate
from mlx_lm.sample_utils import make_sampler
model, tok = load(sys.argv[1])
prompt = tok.encode("The three primary colours are")
tokens = [r.token for r in stream_generate(model, tok, prompt, max_tokens=24,
                                           sampler=make_sampler(0.0))]
print(json.dumps({"tokens": tokens, "info": blas.blas_info()}))
"""


def _probe(code: str, env: dict[str, str], *args: str) -> dict[str, Any]:
    full = {k: v for k, v in os.environ.items() if k not in (BLAS_ENV, SMALL_ROWS_ENV)}
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=full | env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_the_kernel_takes_decode_products_with_the_blas_s_values(blas_choice: str) -> None:
    got = _probe(_VALUES, {BLAS_ENV: blas_choice}, str(MAX_ROWS))
    kind = "mkl" if blas_choice == "mkl" else "openblas"
    assert got["info"]["kind"] == kind and got["info"]["small_rows_products"] == 0
    for m, n, k, error, before, after in got["taken"]:
        assert error < 1e-3 * k**0.5, (m, n, k)
        assert after == before + 1, (m, n, k)  # computed by the kernel, once
    for name, error, before, after in got["left"]:
        assert error < 1e-3, name
        assert after == before, name  # left to the BLAS


def test_a_row_s_outputs_are_the_same_bits_in_any_batch(blas_choice: str) -> None:
    got = _probe(_BATCH, {BLAS_ENV: blas_choice})
    assert got["info"]["small_rows_products"] >= 2 * (40 + 40)
    assert got["differing"] == []


def test_switched_off_by_the_environment(blas_choice: str) -> None:
    off = _probe(_VALUES, {BLAS_ENV: blas_choice, SMALL_ROWS_ENV: "0"}, str(MAX_ROWS))
    assert off["info"]["small_rows_products"] is None
    for m, n, k, error, _before, _after in off["taken"]:
        assert error < 1e-3 * k**0.5, (m, n, k)  # the BLAS's products, still right


@pytest.mark.skipif(mkl_library() is None, reason="needs the mkl wheel (the `mkl` extra)")
def test_off_beside_mkl_on_another_threading_layer() -> None:
    env = {BLAS_ENV: "mkl", "MKL_THREADING_LAYER": "SEQUENTIAL"}
    sequential = _probe(_VALUES, env, str(MAX_ROWS))
    assert sequential["info"]["small_rows_products"] is None
    assert sequential["info"]["mkl_threading_layer"] == "SEQUENTIAL"
    for m, n, k, error, _before, _after in sequential["taken"]:
        assert error < 1e-3 * k**0.5, (m, n, k)


@pytest.mark.skipif(not OPENBLAS_PTHREADS, reason="needs libopenblas0-pthread")
def test_off_beside_openblas_s_pthreads_build_which_still_forwards_one_row_products() -> None:
    pthreads = OPENBLAS_PTHREADS[0]
    got = _probe(_VALUES, {BLAS_ENV: pthreads}, str(MAX_ROWS))
    assert got["info"]["small_rows_products"] is None
    for m, n, k, error, _before, _after in got["taken"]:
        assert error < 1e-3 * k**0.5, (m, n, k)
    one_row = _probe(_ONE_ROW, {BLAS_ENV: pthreads})
    assert one_row["shim_loaded"] and one_row["small_rows_products"] is None
    assert one_row["gemv_forwarded"] == 1  # through the shim, on to blas_gemv.py's sgemv


def test_greedy_tokens_are_the_same_with_and_without_the_kernel(
    embedded_model_dir: Path, blas_choice: str
) -> None:
    on = _probe(_TOKENS, {BLAS_ENV: blas_choice}, str(embedded_model_dir))
    off = _probe(_TOKENS, {BLAS_ENV: blas_choice, SMALL_ROWS_ENV: "0"}, str(embedded_model_dir))
    assert on["info"]["small_rows_products"] > 24 * 30  # every decode step's dense products
    assert off["info"]["small_rows_products"] is None
    assert on["tokens"] == off["tokens"] and len(on["tokens"]) == 24
