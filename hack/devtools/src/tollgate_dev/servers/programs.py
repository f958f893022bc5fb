"""Run real gateway and stand-in processes for tests, `make run` and benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tollgate_dev.proc import free_port, spawning, stop_process, wait_http


@dataclass
class StandinProcess:
    """The Ollama stand-in (a protocol-faithful test double, not Ollama) as a process."""

    host: str = "127.0.0.1"
    port: int = 0
    models: str = "llama3:8b,nomic-embed-text:latest"
    extra: list[str] = field(default_factory=list)
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30) -> str:
        if self.port == 0:
            self.port = free_port(self.host)
        out = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115  (None: inherit)
        with spawning():
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tollgate_standin",
                    "--host",
                    self.host,
                    "--port",
                    str(self.port),
                    "--models",
                    self.models,
                    *self.extra,
                ],
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        wait_http(self.url + "/api/version", timeout, self.proc)
        return self.url

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


@dataclass
class GatewayProcess:
    """`tollgate-gateway serve` as a real process, configured through its environment."""

    env: dict[str, str]
    host: str = "127.0.0.1"
    port: int = 0
    metrics_port: int = 0
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        """Where /metrics is served: a port of its own, not the serving port."""
        return f"http://{self.metrics_address}/metrics"

    @property
    def metrics_address(self) -> str:
        """host:port of /metrics, as a Prometheus scrape target."""
        return f"{self.host}:{self.metrics_port}"

    def start(self, timeout: float = 60) -> str:
        if self.port == 0:
            self.port = free_port(self.host)
        if self.metrics_port == 0:
            self.metrics_port = int(self.env.get("TOLLGATE_METRICS_PORT") or free_port(self.host))
        env = {
            **os.environ,
            **self.env,
            "TOLLGATE_HOST": self.host,
            "TOLLGATE_PORT": str(self.port),
            "TOLLGATE_METRICS_PORT": str(self.metrics_port),
        }
        out = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115  (None: inherit)
        with spawning():
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tollgate_gateway.cli", "serve"],
                env=env,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        wait_http(self.url + "/readyz", timeout, self.proc)
        return self.url

    def kill(self) -> None:
        """Die abruptly, as a crashed pod would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> int | None:
        code = stop_process(self.proc)
        self.proc = None
        return code
