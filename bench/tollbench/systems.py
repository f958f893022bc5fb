"""The systems under test, each started in front of a given upstream and stopped again.

direct    the upstream itself: the floor
caddy     Caddy's reverse_proxy (Go): what a lean proxy costs
minimal   FastAPI + aiohttp pass-through (bench/servers/minimal_proxy.py): the Python reference
litellm   the LiteLLM proxy from PyPI, one worker, as its docs run it
tollgate  the Tollgate gateway, one worker, with auth, limits, usage and metrics all on
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from tollbench.procs import Proc, Watched

BENCH = Path(__file__).resolve().parents[1]
CHAT_MODEL = "llama3:8b"
EMBED_MODEL = "nomic-embed-text"
STREAM_ALIAS = "soak-stream"  # Tollgate only: a second alias on the streaming upstream


class StartError(RuntimeError):
    pass


def wait_ready(url: str, proc: Proc, timeout: float, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not proc.alive():
            tail = proc.log.read_text(errors="replace")[-2500:] if proc.log.exists() else ""
            raise StartError(f"{proc.name} exited before {url} answered:\n{tail}")
        try:
            response = httpx.get(url, timeout=2, headers=headers)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise StartError(f"{proc.name}: {url} not ready within {timeout:.0f}s ({last})")


def free_port() -> int:
    from tollgate_dev.proc import free_port as _free

    return _free()


@dataclass
class TollgateSetup:
    """The admin account and secrets of every Tollgate the bench starts on its database:
    the first one creates the admin, so later ones (the routing scenario's) log in with it."""

    admin_email: str = "bench@tollgate.test"
    admin_password: str = field(default_factory=lambda: "bench-" + secrets.token_hex(12))
    jwt_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    key_pepper: str = field(default_factory=lambda: secrets.token_hex(16))


@dataclass
class Context:
    """What every system may use: where to write, which binaries, which CPUs."""

    work: Path
    caddy: Path
    litellm_venv: Path
    postgres_dsn: str
    postgres_admin_dsn: str
    redis_url: str
    sut_cpus: str = "0"
    side_cpus: str = "1"
    litellm_db: str = "auto"  # "auto": try virtual keys on PostgreSQL; "off": master key only
    tollgate_setup: TollgateSetup = field(default_factory=TollgateSetup)


class System:
    name = ""
    label = ""
    key = ""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.proc: Proc | None = None
        self.commands: list[str] = []
        self.notes: list[str] = []

    def start(self, upstream: str, phase: str) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def watched(self) -> list[Watched]:
        if self.proc is None:
            return []
        proc = self.proc
        return [Watched(self.name, "sut", proc.cpus, proc.tree)]

    def version(self) -> str:
        return ""

    def describe(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "version": self.version(),
            "commands": sorted(set(self.commands)),
            "notes": self.notes,
        }

    def _log(self, phase: str) -> Path:
        return self.ctx.work / "logs" / f"{self.name}-{phase}.log"


class Direct(System):
    name = "direct"
    label = "upstream directly"

    def start(self, upstream: str, phase: str) -> str:
        return upstream

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "notes": ["no proxy: the load generator calls the upstream"]}


def caddy_version(binary: Path) -> str:
    out = subprocess.run([str(binary), "version"], capture_output=True, text=True, check=False)
    return out.stdout.split()[0] if out.stdout else "unknown"


class Caddy(System):
    name = "caddy"
    label = "Caddy reverse_proxy"

    def start(self, upstream: str, phase: str) -> str:
        port = free_port()
        config = {
            "admin": {"disabled": True},
            "logging": {"logs": {"default": {"level": "ERROR"}}},
            "apps": {
                "http": {
                    "servers": {
                        "proxy": {
                            "listen": [f"127.0.0.1:{port}"],
                            "automatic_https": {"disable": True},
                            "routes": [
                                {
                                    "handle": [
                                        {
                                            "handler": "reverse_proxy",
                                            "upstreams": [{"dial": upstream.split("://", 1)[1]}],
                                            "flush_interval": -1,
                                            "transport": {
                                                "protocol": "http",
                                                "keep_alive": {"max_idle_conns_per_host": 4096},
                                            },
                                        }
                                    ]
                                }
                            ],
                        }
                    }
                }
            },
        }
        path = self.ctx.work / f"caddy-proxy-{phase}.json"
        path.write_text(json.dumps(config, indent=2))
        self.proc = Proc(
            "caddy",
            [str(self.ctx.caddy), "run", "--config", str(path)],
            self.ctx.sut_cpus,
            self._log(phase),
        ).start()
        self.commands.append(self.proc.command)
        url = f"http://127.0.0.1:{port}"
        _wait_port(port, self.proc)
        return url

    def version(self) -> str:
        return caddy_version(self.ctx.caddy)


def _wait_port(port: int, proc: Proc, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StartError(f"{proc.name} exited: {proc.log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise StartError(f"{proc.name} did not listen on {port}")


class Minimal(System):
    name = "minimal"
    label = "minimal FastAPI + aiohttp proxy"

    def start(self, upstream: str, phase: str) -> str:
        port = free_port()
        script = BENCH / "servers" / "minimal_proxy.py"
        self.proc = Proc(
            "minimal",
            [sys.executable, str(script), "--port", str(port), "--upstream", upstream],
            self.ctx.sut_cpus,
            self._log(phase),
        ).start()
        self.commands.append(self.proc.command)
        _wait_port(port, self.proc)
        return f"http://127.0.0.1:{port}"

    def version(self) -> str:
        names = ("fastapi", "uvicorn", "aiohttp", "uvloop", "httptools")
        return ", ".join(f"{n} {metadata.version(n)}" for n in names)


class LiteLLM(System):
    name = "litellm"
    label = "LiteLLM proxy"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.master_key = "sk-bench-" + secrets.token_hex(16)
        self.key = self.master_key
        self.mode: str | None = None  # "virtual key" or "master key"

    def _config(self, upstream: str, phase: str) -> Path:
        lines = ["model_list:"]
        for name in (CHAT_MODEL, EMBED_MODEL):
            lines += [
                f'  - model_name: "{name}"',
                "    litellm_params:",
                f'      model: "openai/{name}"',
                f'      api_base: "{upstream}/v1"',
                '      api_key: "none"',
            ]
        lines += ["general_settings:", f'  master_key: "{self.master_key}"']
        path = self.ctx.work / f"litellm-{phase}.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _launch(self, config: Path, phase: str, database_url: str | None) -> tuple[Proc, int]:
        port = free_port()
        env = {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no internet: use the bundled price map
            "LITELLM_LOG": "ERROR",
        }
        if database_url:
            env["DATABASE_URL"] = database_url
        argv = [
            str(self.ctx.litellm_venv / "bin" / "litellm"),
            "--config",
            str(config),
            "--port",
            str(port),
            "--num_workers",
            "1",
        ]
        proc = Proc(
            "litellm", argv, self.ctx.sut_cpus, self._log(phase), env=env, cwd=self.ctx.work
        )
        proc.start()
        return proc, port

    def start(self, upstream: str, phase: str) -> str:
        config = self._config(upstream, phase)
        if self.mode is None:
            self.mode = "master key"
            if self.ctx.litellm_db == "auto":
                self._try_database(config, phase)
        db = self._database_url() if self.mode == "virtual key" else None
        proc, port = self._launch(config, phase, db)
        self.proc = proc
        shown = "DATABASE_URL=… " if db else ""
        self.commands.append(shown + proc.command.replace(self.master_key, "$MASTER_KEY"))
        url = f"http://127.0.0.1:{port}"
        wait_ready(url + "/health/liveliness", proc, 240)
        if self.mode == "virtual key" and self.key == self.master_key:
            self.key = self._virtual_key(url)
        return url

    def _database_url(self) -> str:
        return self.ctx.postgres_admin_dsn.rsplit("/", 1)[0] + "/litellm"

    def _try_database(self, config: Path, phase: str) -> None:
        """Virtual keys need LiteLLM's Prisma database; see whether it can start offline."""
        import psycopg

        with psycopg.connect(self.ctx.postgres_admin_dsn, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname='litellm'").fetchone() is None:
                conn.execute("CREATE DATABASE litellm")
        proc, port = self._launch(config, phase + "-dbprobe", self._database_url())
        try:
            wait_ready(f"http://127.0.0.1:{port}/health/liveliness", proc, 240)
            self.mode = "virtual key"
            self.notes.append(
                "virtual keys: LiteLLM's Prisma database runs on the local PostgreSQL"
            )
        except StartError as exc:
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
            if "getaddrinfo" in text or "ENOTFOUND" in text:
                why = "Prisma could not download its query engine: this machine has no internet"
            else:
                lines = [x.strip() for x in text.splitlines() if x.strip()]
                why = next((x for x in lines if "prisma" in x.lower() and len(x) > 20), "")
            self.notes.append(
                "master key only: with DATABASE_URL LiteLLM did not start "
                f"({why.strip()[:220] or 'see the log'}); virtual keys, budgets and spend logs "
                "need that database, so none of them ran"
            )
        finally:
            proc.stop()

    def _virtual_key(self, url: str) -> str:
        response = httpx.post(
            url + "/key/generate",
            headers={"Authorization": f"Bearer {self.master_key}"},
            json={
                "models": [CHAT_MODEL, EMBED_MODEL],
                "rpm_limit": 1_000_000_000,
                "tpm_limit": 1_000_000_000,
                "max_parallel_requests": 100_000,
                "max_budget": 1_000_000,
            },
            timeout=30,
        )
        response.raise_for_status()
        key: str = response.json()["key"]
        return key

    def version(self) -> str:
        python = self.ctx.litellm_venv / "bin" / "python"
        code = "import importlib.metadata as m; print(m.version('litellm'))"
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
        return "litellm " + out.stdout.strip()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "mode": self.mode}


class Tollgate(System):
    name = "tollgate"
    label = "Tollgate gateway"

    def __init__(self, ctx: Context, stream_upstream: str) -> None:
        super().__init__(ctx)
        self.upstream_url = ""
        self.setup = ctx.tollgate_setup
        self.stream_upstream = stream_upstream
        self.key_fields: dict[str, Any] = {}
        self.extra_env: dict[str, str] = {}
        # the bench's aliases and key (False: a scenario that provisions its own, on the
        # database where the first Tollgate already created them)
        self.provision = True
        self.metrics_url = ""

    def env(self, upstream: str) -> dict[str, str]:
        return {
            "POSTGRES_DSN": self.ctx.postgres_dsn,
            "REDIS_URL": self.ctx.redis_url,
            "OLLAMA_BASE_URL": upstream,
            "ADMIN_EMAIL": self.setup.admin_email,
            "ADMIN_PASSWORD": self.setup.admin_password,
            "JWT_SECRET": self.setup.jwt_secret,
            "TOLLGATE_KEY_PEPPER": self.setup.key_pepper,
            "TOLLGATE_WORKERS": "1",
            "TOLLGATE_METRICS_PER_KEY": "true",
            "TOLLGATE_USAGE_SPOOL_DIR": str(self.ctx.work / "usage-spool"),
            **self.extra_env,
        }

    def start(self, upstream: str, phase: str) -> str:
        port = free_port()
        self.metrics_url = f"http://127.0.0.1:{free_port()}/metrics"
        env = {
            **self.env(upstream),
            "TOLLGATE_HOST": "127.0.0.1",
            "TOLLGATE_PORT": str(port),
            "TOLLGATE_METRICS_PORT": self.metrics_url.rsplit(":", 1)[1].split("/")[0],
        }
        gateway = Path(sys.executable).parent / "tollgate-gateway"
        self.proc = Proc(
            "tollgate", [str(gateway), "serve"], self.ctx.sut_cpus, self._log(phase), env=env
        ).start()
        self.commands.append(self.proc.command)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url + "/readyz", self.proc, 90)
        if not self.key and self.provision:
            self._provision(url)
        return url

    @contextlib.contextmanager
    def admin(self, url: str) -> Iterator[httpx.Client]:
        """A client of the gateway's admin API, logged in as the bench's admin."""
        with httpx.Client(base_url=url, timeout=30) as http:
            login = http.post(
                "/admin/login",
                json={"email": self.setup.admin_email, "password": self.setup.admin_password},
            )
            login.raise_for_status()
            http.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
            yield http

    def _provision(self, url: str) -> None:
        """Priced aliases and one key with every limit set, generous enough to refuse nothing."""
        with self.admin(url) as http:
            for alias, tag, price_in, price_out, backend in (
                (CHAT_MODEL, CHAT_MODEL, "0.5", "1.5", None),
                (EMBED_MODEL, EMBED_MODEL, "0.02", "0", None),
                (STREAM_ALIAS, CHAT_MODEL, "0.5", "1.5", self.stream_upstream),
            ):
                body: dict[str, Any] = {
                    "alias": alias,
                    "backend_tag": tag,
                    "input_price_per_mtok": price_in,
                    "output_price_per_mtok": price_out,
                }
                if backend:
                    body["backend_url"] = backend
                http.post("/admin/models", json=body).raise_for_status()
            self.key_fields = {
                "name": "bench",
                "app": "bench",
                "owner": "bench",
                "allowed_models": [CHAT_MODEL, EMBED_MODEL, STREAM_ALIAS],
                "rate_limit_rpm": 1_000_000_000,
                "tpm_limit": 1_000_000_000,
                "concurrency_limit": 100_000,
                "monthly_budget": "1000000",
            }
            created = http.post("/admin/keys", json=self.key_fields)
            created.raise_for_status()
            self.key = created.json()["key"]

    def version(self) -> str:
        return "tollgate-gateway " + metadata.version("tollgate-gateway")

    def describe(self) -> dict[str, Any]:
        env = {
            k: v
            for k, v in self.env("$UPSTREAM").items()
            if k
            not in (
                "ADMIN_PASSWORD",
                "JWT_SECRET",
                "TOLLGATE_KEY_PEPPER",
                "POSTGRES_DSN",
                "REDIS_URL",
            )
        }
        return {
            **super().describe(),
            "key": {k: v for k, v in self.key_fields.items() if k != "name"},
            "env": env,
        }


class TollgateRouted(Tollgate):
    """Tollgate with the pool's governance on: the chat alias is routed over two replicas
    (both the workload's upstream, under two host names) with the default policy, and its
    pool has slots (too many to ever queue: 256 per replica), so the hot path pays for the
    choice, the in-flight accounting, the pool queue's acquire and release, and the polling."""

    name = "tollgate-routed"
    label = "Tollgate gateway, routing and pool queue on"
    SLOTS = 256  # the most the admin API takes: 512 in all, above every concurrency used

    def env(self, upstream: str) -> dict[str, str]:
        # A database (and usage stream) of its own: it runs beside the plain Tollgate, whose
        # alias of the same name must stay unrouted.
        return {
            **super().env(upstream),
            "POSTGRES_DSN": self._dsn(),
            "TOLLGATE_USAGE_STREAM": "tg:usage:routed",
        }

    def _dsn(self) -> str:
        dsn = self.ctx.postgres_admin_dsn.rsplit("/", 1)[0] + "/tollgate_routed"
        if not getattr(self, "_migrated", False):
            import psycopg

            from tollgate_gateway.cli import migrate
            from tollgate_gateway.config import Settings

            with psycopg.connect(self.ctx.postgres_admin_dsn, autocommit=True) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = 'tollgate_routed'"
                ).fetchone()
                if not exists:
                    conn.execute("CREATE DATABASE tollgate_routed")
            migrate(Settings(postgres_dsn=dsn))
            self._migrated = True
        return dsn

    def _provision(self, url: str) -> None:
        super()._provision(url)
        self._route(url, self.upstream_url)

    def start(self, upstream: str, phase: str) -> str:
        self.upstream_url = upstream
        url = super().start(upstream, phase)
        if self.key:
            self._route(url, upstream)  # each phase has its own upstream
        return url

    def _route(self, url: str, upstream: str) -> None:
        other = upstream.replace("127.0.0.1", "localhost")
        with self.admin(url) as http:
            for model in http.get("/admin/models").json():
                if model["alias"] != CHAT_MODEL:
                    continue
                http.patch(
                    f"/admin/models/{model['id']}",
                    json={
                        "replicas": [
                            {"name": "replica-a", "url": upstream},
                            {"name": "replica-b", "url": other},
                        ],
                        "routing": {"pool": "bench/routed", "slots": self.SLOTS},
                    },
                ).raise_for_status()
