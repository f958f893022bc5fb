"""Pytest fixtures for real services: PostgreSQL, Valkey, the Ollama stand-in, gateways.

A service that cannot start fails the test; nothing is skipped.
"""

from __future__ import annotations

import hashlib
import secrets
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import pytest

from tollgate_dev.proc import ServiceError
from tollgate_dev.servers.backing import LocalPostgres, LocalValkey
from tollgate_dev.servers.programs import GatewayProcess, StandinProcess

ADMIN_EMAIL = "admin@tollgate.test"
ADMIN_PASSWORD = "test-admin-password-" + secrets.token_hex(4)


class _Server(Protocol):
    def start(self) -> str: ...
    def stop(self) -> None: ...


S = TypeVar("S", bound=_Server)


def serve(what: str, server: S) -> Iterator[S]:
    """Start a real server for a fixture, fail (never skip) if it cannot start, stop it after."""
    try:
        server.start()
    except (ServiceError, OSError) as exc:
        pytest.fail(f"{what} could not start: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def service_dir() -> Path:
    # World-traversable so PostgreSQL's unprivileged user can reach its data when we are root.
    path = Path(tempfile.mkdtemp(prefix="tollgate-test-", dir="/var/tmp"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def postgres(service_dir: Path) -> Iterator[LocalPostgres]:
    yield from serve("PostgreSQL", LocalPostgres(service_dir / "postgres"))


@pytest.fixture(scope="session")
def valkey(service_dir: Path) -> Iterator[LocalValkey]:
    yield from serve("Valkey", LocalValkey(service_dir / "valkey"))


@pytest.fixture(scope="session")
def migrated_dsn(postgres: LocalPostgres) -> str:
    from tollgate_schema.db import upgrade
    from tollgate_schema.dsn import to_sqlalchemy_dsn

    upgrade(to_sqlalchemy_dsn(postgres.dsn))
    return postgres.dsn


@pytest.fixture(scope="session")
def standin(service_dir: Path) -> Iterator[StandinProcess]:
    yield from serve("Ollama stand-in", StandinProcess(log_path=service_dir / "standin.log"))


def gateway_env(dsn: str, redis_url: str, ollama: str, **extra: str) -> dict[str, str]:
    # Gateways of one database share a usage stream; a test's own database gets its own (the
    # session's Valkey is shared, and a stream's rows go to the database of whoever drains it).
    stream = "tg:usage:" + hashlib.sha256(dsn.encode()).hexdigest()[:12]
    return {
        "TOLLGATE_USAGE_STREAM": stream,
        "POSTGRES_DSN": dsn,
        "REDIS_URL": redis_url,
        "OLLAMA_BASE_URL": ollama,
        "ADMIN_EMAIL": ADMIN_EMAIL,
        "ADMIN_PASSWORD": ADMIN_PASSWORD,
        "JWT_SECRET": "test-jwt-secret-" + "x" * 32,
        "TOLLGATE_KEY_PEPPER": "test-key-pepper-" + "p" * 16,
        "TOLLGATE_USAGE_FLUSH_INTERVAL_SECONDS": "0.1",
        **extra,
    }


@dataclass
class Gateways:
    """Starts gateway processes on demand; stops all of them at the end."""

    dsn: str
    redis_url: str
    ollama: str
    logs: Path
    started: list[GatewayProcess] = field(default_factory=list)

    def start(self, **extra: str) -> GatewayProcess:
        env = gateway_env(self.dsn, self.redis_url, self.ollama, **extra)
        proc = GatewayProcess(env, log_path=self.logs / f"gateway-{len(self.started)}.log")
        self.started.append(proc)
        try:
            proc.start()
        except (ServiceError, OSError) as exc:
            log = proc.log_path.read_text()[-3000:] if proc.log_path else ""
            pytest.fail(f"gateway could not start: {exc}\n{log}", pytrace=False)
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            proc.stop()


@pytest.fixture(scope="session")
def gateways(
    migrated_dsn: str, valkey: LocalValkey, standin: StandinProcess, service_dir: Path
) -> Iterator[Gateways]:
    pool = Gateways(migrated_dsn, valkey.url, standin.url, service_dir)
    yield pool
    pool.stop_all()


@pytest.fixture(scope="session")
def gateway(gateways: Gateways) -> GatewayProcess:
    return gateways.start()


class Admin:
    """A logged-in admin API client (httpx)."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30)
        token = self.http.post(
            "/admin/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        )
        token.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    def create_key(self, **fields: Any) -> dict[str, Any]:
        body = {"name": "test-" + secrets.token_hex(3), **fields}
        response = self.http.post("/admin/keys", json=body)
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data

    def ensure_model(self, alias: str, backend_tag: str, **fields: Any) -> dict[str, Any]:
        for model in self.http.get("/admin/models").json():
            if model["alias"] == alias:
                return dict(model)
        response = self.http.post(
            "/admin/models", json={"alias": alias, "backend_tag": backend_tag, **fields}
        )
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data


@pytest.fixture(scope="session")
def admin(gateway: GatewayProcess) -> Iterator[Admin]:
    client = Admin(gateway.url)
    yield client
    client.http.close()


@pytest.fixture(scope="session")
def chat_model(admin: Admin) -> str:
    """An alias `gpt-4` for the stand-in's llama3:8b, priced so costs are visible."""
    admin.ensure_model("gpt-4", "llama3:8b", input_price_per_mtok="1.5", output_price_per_mtok="2")
    admin.ensure_model("test-embedding-small", "nomic-embed-text:latest")
    return "gpt-4"


@pytest.fixture
def new_key(admin: Admin, chat_model: str) -> Callable[..., dict[str, Any]]:
    return admin.create_key
