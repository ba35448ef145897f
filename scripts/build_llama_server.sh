#!/usr/bin/env bash
# Build llama.cpp's `llama-server` and `llama-quantize` from the llama.cpp source vendored in
# the `llama-cpp-python` sdist on PyPI (the package registry is reachable where GitHub may not
# be), for the benchmark's `--compare llama-server` (docs/concurrency.md).
#
#   scripts/build_llama_server.sh [PYTHON]     (`make llama-server`)
#
# Installs into $ABSTRACTCORE_CACHE_DIR/llama.cpp/bin (default ~/.cache/abstractcore/llama.cpp/bin),
# where the benchmark looks after $LLAMA_SERVER and PATH. On macOS `brew install llama.cpp`
# is the easier way; this script builds there too (Metal on, llama.cpp's default).
#
# Why explicit CPU flags: a `-march=native` (GGML_NATIVE) build died with SIGILL on an AMX
# instruction on a VM whose /proc/cpuinfo lists AMX but whose hypervisor does not allow it. So
# on x86 the build names AVX2/FMA/F16C, AVX-512 (and VNNI) only when the CPU lists them, and
# turns AMX off.
set -euo pipefail

PYTHON=${1:-python3}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
HOME_DIR=${ABSTRACTCORE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/abstractcore}
ROOT="$HOME_DIR/llama.cpp"
BIN="$ROOT/bin"
JOBS=${JOBS:-$( (command -v nproc >/dev/null && nproc) || sysctl -n hw.ncpu 2>/dev/null || echo 2)}

if [ -x "$BIN/llama-server" ] && [ -x "$BIN/llama-quantize" ] && [ -z "${REBUILD:-}" ]; then
  echo "llama-server already built: $BIN/llama-server (REBUILD=1 to build again)"
  exit 0
fi

need() { command -v "$1" >/dev/null || { echo "error: $1 is needed to build llama.cpp ($2)" >&2; exit 1; }; }
need c++ "a C++17 compiler: apt-get install g++ / xcode-select --install"
if ! command -v cmake >/dev/null; then
  echo "cmake not found: installing it from PyPI into the build folder"
  "$PYTHON" -m pip install -q --target "$ROOT/tools" cmake ninja
  export PATH="$ROOT/tools/bin:$PATH"
  export PYTHONPATH="$ROOT/tools${PYTHONPATH:+:$PYTHONPATH}"
fi
GENERATOR=()
command -v ninja >/dev/null && GENERATOR=(-G Ninja)

mkdir -p "$ROOT/src"
SDIST="$ROOT/src/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then
  echo "downloading the llama-cpp-python $VERSION sdist (its vendored llama.cpp)"
  "$PYTHON" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$ROOT/src"
fi
SRC="$ROOT/src/llama_cpp_python-$VERSION/vendor/llama.cpp"
[ -d "$SRC" ] || tar xzf "$SDIST" -C "$ROOT/src"

FLAGS=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF
       -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON)
case "$(uname -m)" in
  x86_64|amd64)
    has() { grep -q -w "$1" /proc/cpuinfo 2>/dev/null; }
    onoff() { if has "$1"; then echo ON; else echo OFF; fi; }
    FLAGS+=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2="$(onoff avx2)" -DGGML_FMA="$(onoff fma)"
            -DGGML_F16C="$(onoff f16c)" -DGGML_AVX512="$(onoff avx512f)"
            -DGGML_AVX512_VNNI="$(onoff avx512_vnni)" -DGGML_AVX_VNNI="$(onoff avx_vnni)"
            -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
    ;;
esac

echo "configuring llama.cpp (${FLAGS[*]})"
cmake -S "$SRC" -B "$ROOT/build" "${GENERATOR[@]}" "${FLAGS[@]}" >"$ROOT/cmake.log" 2>&1 \
  || { tail -20 "$ROOT/cmake.log"; exit 1; }
echo "building llama-server and llama-quantize with $JOBS jobs (about 6 minutes on 2 cores)"
cmake --build "$ROOT/build" --target llama-server llama-quantize -j "$JOBS" >"$ROOT/build.log" 2>&1 \
  || { tail -30 "$ROOT/build.log"; exit 1; }
mkdir -p "$BIN"
cp "$ROOT/build/bin/llama-server" "$ROOT/build/bin/llama-quantize" "$BIN/"
"$BIN/llama-server" --version 2>&1 | head -2 || true
echo "installed: $BIN/llama-server"
