"""A benchmark system that is a cluster: N ``abstractcore serve`` instances behind nginx.

``--instances 1 2 4`` adds ``cluster-1``, ``cluster-2``, ``cluster-4`` to a sweep; each starts
its cluster (``abstractcore cluster``'s :class:`~abstractcore.cluster.Cluster`, the embedded
engine in every instance, ``--policy`` in nginx) and is driven like any HTTP server, through
the openai-compatible provider with streaming, so the prompt-cache key of a ``multiturn``
query travels as ``X-Prompt-Cache-Key``. Stopped with the benchmark, Ctrl-C included.
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

from ..cluster import Cluster, find_nginx
from .metrics import QueryResult
from .scenarios import Query
from .sweep_config import GenParams
from .systems import ProviderSystem, System
from .threads import MLXThreads

__all__ = ["CLUSTER_PREFIX", "ClusterSystem", "cluster_size"]

CLUSTER_PREFIX = "cluster-"


def cluster_size(name: str) -> int | None:
    """N for a system named ``cluster-N``, else None."""
    if not name.startswith(CLUSTER_PREFIX):
        return None
    tail = name[len(CLUSTER_PREFIX) :]
    return int(tail) if tail.isdigit() and int(tail) > 0 else None


class ClusterSystem(System):
    """``instances`` local instances of ``model`` behind nginx with ``policy``."""

    def __init__(
        self, instances: int, model: str, policy: str, serve_args: list[str], timeout_s: float
    ) -> None:
        super().__init__(f"{CLUSTER_PREFIX}{instances}")
        find_nginx()  # a missing nginx is a usage error, before anything is created
        self._tmp = tempfile.TemporaryDirectory(prefix="abstractcore-bench-cluster-")
        self._cluster = Cluster(
            Path(self._tmp.name),
            instances=instances,
            serve_args=["--model", model, *serve_args],
            port=_free_port(),
            policy=policy,
            start_timeout_s=timeout_s,
            grace_period_s=5.0,
        )
        self._threads = MLXThreads(f"bench-{self.name}-start", 1)
        self._client: ProviderSystem | None = None
        self._model = model

    async def start(self) -> None:
        await self._threads.run(self._cluster.start)
        self._client = ProviderSystem(
            self.name,
            {"provider": "openai-compatible", "model": self._model,
             "base_url": f"{self._cluster.url}/v1"},
        )  # fmt: skip
        await self._client.start()

    async def run_query(
        self, index: int, query: Query, params: GenParams, concurrency: int
    ) -> QueryResult:
        assert self._client is not None, "start() first"
        return await self._client.run_query(index, query, params, concurrency)

    async def close(self) -> None:
        try:
            if self._client is not None:
                await self._client.close()
        finally:
            self._client = None
            await self._threads.run(self._cluster.stop)
            await self._threads.shutdown()
            self._tmp.cleanup()

    def kill(self) -> None:
        self._cluster.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
