# The README's commands: `make bench` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= mlx,server,bench,dev,mkl
STAMP := $(VENV)/.installed-$(shell echo $(EXTRAS) | tr ',' '-')

.PHONY: setup system-deps model test test-fast lint bench bench-quick llama-server clean

setup: system-deps $(STAMP) model

# On Linux, MLX's CPU backend ships a reference BLAS; OpenBLAS makes float32 matmuls ~30x
# faster (docs/architecture.md, "The machine under it"). Installed only when we are root on a
# Debian-like system. (On Intel CPUs MKL, from the `mkl` extra, is loaded instead of it.) On
# x86_64 its OpenMP build too: the small-rows kernel runs beside that one (docs/concurrency.md,
# "OpenBLAS on AMD's AVX-512 cores").
OPENBLAS_PACKAGES := libopenblas0-pthread $(if $(filter x86_64,$(shell uname -m)),libopenblas0-openmp)

system-deps:
	@if [ "$$(uname -s)" = "Linux" ] && ! { ls /usr/lib/*-linux-gnu/openblas*/libopenblas.so.0 2>/dev/null; \
	    PATH="$$PATH:/sbin:/usr/sbin" ldconfig -p 2>/dev/null; } | grep -q 'libopenblas.*\.so\.0' || \
	    { [ "$$(uname -m)" = "x86_64" ] && command -v apt-get >/dev/null && \
	      ! ls /usr/lib/*-linux-gnu/openblas-openmp/libopenblas.so.0 >/dev/null 2>&1; }; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "installing $(OPENBLAS_PACKAGES)"; \
	    (apt-get install -y -q $(OPENBLAS_PACKAGES) >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q $(OPENBLAS_PACKAGES) >/dev/null) || \
	     echo "warning: could not install $(OPENBLAS_PACKAGES); MLX on CPU may be ~30x slower"); \
	  else \
	    echo "note: install $(OPENBLAS_PACKAGES) for ~30x faster MLX on CPU"; \
	  fi; \
	fi
	@# nginx fronts `abstractcore cluster` (docs/scale-out.md); its tests skip without it.
	@if ! command -v nginx >/dev/null && ! test -x /usr/sbin/nginx; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "installing nginx"; \
	    (apt-get install -y -q nginx >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q nginx >/dev/null) || \
	     echo "warning: could not install nginx; abstractcore cluster needs it"); \
	  else \
	    echo "note: nginx not found; abstractcore cluster needs it (apt-get install nginx / brew install nginx)"; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $@

# Fetch and convert the embedded model once (cached under the user cache dir).
model: $(STAMP)
	$(PY) -m abstractcore models pull smollm2-135m

test: setup
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not mlx and not slow"

LINT_PATHS := abstractcore tests examples

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy abstractcore

bench: setup
	$(PY) examples/mlx_concurrency_benchmark.py

bench-quick: setup
	$(PY) examples/mlx_concurrency_benchmark.py --quick

# llama.cpp's server for `--compare llama-server` (docs/concurrency.md), built from the llama.cpp
# source vendored in the llama-cpp-python sdist (~6 min on 2 cores); not needed by the tests.
llama-server: $(STAMP)
	bash scripts/build_llama_server.sh $(PY)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
