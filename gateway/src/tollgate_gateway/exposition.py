"""/metrics on a port of its own, from a thread of the serving process.

Started before uvicorn; with several workers that is the supervising process, which imports
none of the metrics itself (so it adds no files of its own to PROMETHEUS_MULTIPROC_DIR) and
serves what every worker wrote there.
"""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server


def registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return merged
    return REGISTRY


def serve(host: str, port: int) -> None:
    """Serve /metrics on host:port (OSError when the port is taken)."""
    start_http_server(port, host, registry=registry())
