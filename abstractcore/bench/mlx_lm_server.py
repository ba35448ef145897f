"""mlx-lm's own HTTP server as a child process on loopback (a comparison baseline)."""

from __future__ import annotations

from .child_server import ChildServer, free_port, python_command
from .threads import MLXThreads

__all__ = ["MLXLMServer", "free_port"]

# Same BLAS as our engine (docs/architecture.md, "The machine under it"), then mlx-lm's own
# CLI entry point.
_MLX_LM_MAIN = (
    "from abstractcore.providers.mlx.blas import preload_blas; preload_blas()\n"
    "from mlx_lm.server import main; main()\n"
)


class MLXLMServer(ChildServer):
    """Starts ``mlx_lm server`` with the same model, waits until it answers, always stops it."""

    def __init__(self, model: str, max_concurrency: int, start_timeout_s: float) -> None:
        super().__init__("mlx-lm-server", start_timeout_s)
        self.model = model
        self.max_concurrency = max_concurrency

    async def start(self) -> str:
        """Launch the server and return its ``/v1`` base URL once it serves requests."""
        from ..providers.mlx.loading import resolve_model_path

        # Resolving may convert a GGUF with MLX: on a thread that is reaped before exit.
        threads = MLXThreads("bench-resolve", 1)
        try:
            model_dir = await threads.run(resolve_model_path, self.model)
        finally:
            await threads.shutdown()
        port = free_port()
        args = [
            "--model", str(model_dir),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--log-level", "WARNING",
            "--decode-concurrency", str(max(32, self.max_concurrency)),
        ]  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        await self.launch(python_command(_MLX_LM_MAIN, args), base, "/v1/models")
        return base + "/v1"
