"""A real Prometheus server (Debian's `prometheus` package) for tests: scrape targets, query."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tollgate_dev.proc import ServiceError, free_port, stop_process, wait_http


@dataclass
class PrometheusServer:
    data_dir: Path
    targets: dict[str, list[str]]  # job name -> ["host:port", ...]
    rule_files: list[Path] = field(default_factory=list)
    scrape_interval: str = "1s"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> str:
        binary = shutil.which("prometheus")
        if binary is None:
            raise ServiceError("prometheus is not installed (hack/ensure-debs.sh prometheus)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = free_port()
        config = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": targets}]}
                for job, targets in self.targets.items()
            ],
        }
        config_path = self.data_dir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        log = open(self.data_dir / "prometheus.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.data_dir}/tsdb",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        wait_http(self.url + "/-/ready", timeout, self.proc)
        return self.url

    def query(self, promql: str) -> list[dict[str, Any]]:
        response = httpx.get(self.url + "/api/v1/query", params={"query": promql}, timeout=10)
        body: dict[str, Any] = response.json()
        if body.get("status") != "success":
            raise ServiceError(f"query failed: {promql}: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_until(self, promql: str, timeout: float = 30) -> list[dict[str, Any]]:
        """Poll a query until it returns data; the last (possibly empty) result otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)

    def wait_for_scrape(self, job: str, after: float, timeout: float = 30) -> None:
        """Wait until every target of `job` has been scraped since `after` (a `time.time()`),
        so that the samples include what happened before it."""
        if not self.wait_until(f'min(timestamp(up{{job="{job}"}})) > {after:.3f}', timeout):
            raise ServiceError(f"{job} was not scraped after {after:.3f} within {timeout:.0f}s")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
