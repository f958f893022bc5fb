"""A real Jaeger (v2, built from source by hack/build-jaeger.sh) for the tracing tests:
receives OTLP over HTTP, keeps traces in memory, answers the query API."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tollgate_dev.proc import ServiceError, cache_root, free_port, stop_process, wait_http

JAEGER_VERSION = "v1.76.0"


def jaeger_binary() -> Path:
    return cache_root() / f"jaeger-{JAEGER_VERSION}" / "jaeger"


@dataclass
class JaegerServer:
    data_dir: Path
    otlp_port: int = 0
    query_port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def otlp_endpoint(self) -> str:
        """What OTEL_EXPORTER_OTLP_ENDPOINT takes (the SDK appends /v1/traces)."""
        return f"http://127.0.0.1:{self.otlp_port}"

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.query_port}"

    def start(self, timeout: float = 60) -> str:
        binary = jaeger_binary()
        if not binary.exists():
            raise ServiceError(f"{binary} is missing: run hack/build-jaeger.sh")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.otlp_port = self.otlp_port or free_port()
        self.query_port = self.query_port or free_port()
        health, query_grpc = free_port(), free_port()
        config = {
            "service": {
                "extensions": ["jaeger_storage", "jaeger_query", "healthcheckv2"],
                "pipelines": {
                    "traces": {
                        "receivers": ["otlp"],
                        "processors": ["batch"],
                        "exporters": ["jaeger_storage_exporter"],
                    }
                },
                "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "info"}},
            },
            "extensions": {
                "healthcheckv2": {"use_v2": True, "http": {"endpoint": f"127.0.0.1:{health}"}},
                "jaeger_query": {
                    "storage": {"traces": "memstore"},
                    "http": {"endpoint": f"127.0.0.1:{self.query_port}"},
                    "grpc": {"endpoint": f"127.0.0.1:{query_grpc}"},
                },
                "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": 10000}}}},
            },
            "receivers": {
                "otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{self.otlp_port}"}}}
            },
            "processors": {"batch": {"timeout": "100ms"}},
            "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
        }
        path = self.data_dir / "jaeger.yaml"
        path.write_text(yaml.safe_dump(config))
        log = open(self.data_dir / "jaeger.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(binary), f"--config={path}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
        )
        wait_http(f"{self.query_url}/api/services", timeout, self.proc)
        return self.query_url

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def trace(self, trace_id: str, timeout: float = 20, min_spans: int = 1) -> dict[str, Any]:
        """One trace from the query API, waiting until it has ``min_spans`` spans."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            response = httpx.get(f"{self.query_url}/api/traces/{trace_id}", timeout=5)
            if response.status_code == 200:
                data = response.json().get("data") or []
                if data and len(data[0]["spans"]) >= min_spans:
                    found: dict[str, Any] = data[0]
                    return found
                last = data
            time.sleep(0.2)
        raise AssertionError(f"trace {trace_id} not found with {min_spans} spans: {last}")

    def traces(self, service: str, limit: int = 50) -> list[dict[str, Any]]:
        response = httpx.get(
            f"{self.query_url}/api/traces",
            params={"service": service, "limit": limit, "lookback": "1h"},
            timeout=5,
        )
        response.raise_for_status()
        return list(response.json().get("data") or [])
