"""A benchmark system that is a cluster: N ``abstractcore serve`` instances behind nginx.

``--instances 1 2 4`` adds ``cluster-1``, ``cluster-2``, ``cluster-4`` to a sweep; each starts
its cluster (``abstractcore cluster``'s :class:`~abstractcore.cluster.Cluster`, the embedded
engine in every instance, ``--policy`` in nginx) and is driven like any HTTP server, through
the openai-compatible provider with streaming, so the prompt-cache key of a ``multiturn``
query travels as ``X-Prompt-Cache-Key``. Stopped with the benchmark, Ctrl-C included.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..cluster import Cluster, find_nginx
from .mlx_lm_server import free_port
from .systems import HTTPServerSystem
from .threads import MLXThreads

__all__ = ["CLUSTER_PREFIX", "ClusterSystem", "cluster_size"]

CLUSTER_PREFIX = "cluster-"


def cluster_size(name: str) -> int | None:
    """N for a system named ``cluster-N``, else None."""
    if not name.startswith(CLUSTER_PREFIX):
        return None
    tail = name[len(CLUSTER_PREFIX) :]
    return int(tail) if tail.isdigit() and int(tail) > 0 else None


class ClusterSystem(HTTPServerSystem):
    """``instances`` local instances of ``model`` behind nginx with ``policy``."""

    def __init__(
        self, instances: int, model: str, policy: str, serve_args: list[str], timeout_s: float
    ) -> None:
        super().__init__(f"{CLUSTER_PREFIX}{instances}", model)
        find_nginx()  # a missing nginx is a usage error, before anything is created
        self._tmp = tempfile.TemporaryDirectory(prefix="abstractcore-bench-cluster-")
        self._cluster = Cluster(
            Path(self._tmp.name),
            instances=instances,
            serve_args=["--model", model, *serve_args],
            port=free_port(),
            policy=policy,
            start_timeout_s=timeout_s,
            grace_period_s=5.0,
        )
        self._threads = MLXThreads(f"bench-{self.name}-start", 1)

    async def launch(self) -> str:
        await self._threads.run(self._cluster.start)
        return f"{self._cluster.url}/v1"

    async def shutdown(self) -> None:
        await self._threads.run(self._cluster.stop)
        await self._threads.shutdown()
        self._tmp.cleanup()

    def kill(self) -> None:
        self._cluster.kill()
