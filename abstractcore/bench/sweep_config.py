"""Benchmark settings: one validated object the CLI builds and the runner reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_OUT_DIR",
    "ENGINE",
    "ENGINE_STREAM",
    "INTERLEAVED",
    "LLAMA_SERVER",
    "LLAMA_SERVER_QUANT",
    "MLX_LM_SERVER",
    "ORDERS",
    "SEQUENTIAL",
    "SERIAL",
    "BenchConfig",
    "GenParams",
]

DEFAULT_OUT_DIR = Path("test_results") / "mlx_concurrency"

# Names of the built-in systems; any other --compare name is a configured profile.
ENGINE = "engine"  # the MLX provider through agenerate(), as an app awaits answers
ENGINE_STREAM = "engine-stream"  # the same provider through astream(), token by token
SERIAL = "serial"
MLX_LM_SERVER = "mlx-lm-server"
# llama.cpp's server on the same weights as the engine (float32 on the CPU), and on the GGUF's
# own quantization (llama_server.py).
LLAMA_SERVER = "llama-server"
LLAMA_SERVER_QUANT = "llama-server-quant"

# How systems take turns (runner.py): level by level in rotating rounds, or one after another.
INTERLEAVED = "interleaved"
SEQUENTIAL = "sequential"
ORDERS = (INTERLEAVED, SEQUENTIAL)


@dataclass(frozen=True)
class GenParams:
    """Sampling settings every system gets for every query."""

    max_output_tokens: int = 64
    temperature: float = 0.0
    seed: int | None = None


@dataclass(frozen=True)
class BenchConfig:
    """Everything one sweep needs."""

    prompts_file: Path
    provider: str = "mlx"
    model: str = "smollm2-135m"
    profile: str | None = None
    base_url: str | None = None
    queries: int = 16
    levels: tuple[int, ...] = (1, 2, 4, 8, 16)
    params: GenParams = field(default_factory=GenParams)
    compare: tuple[str, ...] = ()
    scenario: str = "independent"
    progress_interval: float = 5.0
    out_dir: Path = DEFAULT_OUT_DIR
    quick: bool = False
    server_start_timeout_s: float = 180.0
    order: str = INTERLEAVED
    #: ``--instances``: a ``cluster-N`` system (N instances behind nginx) per entry.
    instances: tuple[int, ...] = ()
    policy: str = "affinity"
    #: ``--full-sweep``: every (instances, max batch size, prefill batch size) cell.
    full_sweep: bool = False
    max_batch_sizes: tuple[int, ...] = (32,)
    prefill_batch_sizes: tuple[int, ...] = (8,)

    @property
    def primary_name(self) -> str:
        """Label of the system under test: ``engine`` for the in-process MLX provider."""
        if self.profile:
            return self.profile
        return ENGINE if self.provider == "mlx" else self.provider

    @property
    def system_names(self) -> list[str]:
        """Every measured system, primary first, in run order, without duplicates."""
        names = [self.primary_name]
        for name in [*self.compare, *(f"cluster-{n}" for n in self.instances)]:
            if name not in names:
                names.append(name)
        return names
