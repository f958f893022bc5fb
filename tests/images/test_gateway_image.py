"""The gateway image, run as the chart runs it: the migration Job's containers migrate a real
PostgreSQL, the gateway Deployment's init container waits for the schema, and the gateway
serves /readyz and a chat through the Ollama stand-in; with weak secrets it refuses to start.
Every container runs as the chart's user with a read-only root filesystem, no capabilities, and
the chart's emptyDirs as tmpfs mounts."""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from image_helpers import Manifest, chart_container, image_values, workload

from tollgate_dev.plugins.services import ADMIN_EMAIL, ADMIN_PASSWORD, Admin
from tollgate_dev.proc import free_port
from tollgate_dev.servers.backing import LocalPostgres, LocalValkey
from tollgate_dev.servers.images import BuiltImages, Container
from tollgate_dev.servers.programs import StandinProcess

pytestmark = pytest.mark.timeout(900)  # the first test builds the images


@pytest.fixture(scope="module")
def chart(images: BuiltImages, render_chart: Callable[..., list[Manifest]]) -> list[Manifest]:
    return render_chart(image_values(images))


@pytest.fixture
def fresh_dsn(postgres: LocalPostgres) -> Iterator[str]:
    name = f"image_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres.dsn.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def secrets_env(dsn: str, redis_url: str) -> dict[str, str]:
    """What the chart's Secret gives the gateway."""
    return {
        "POSTGRES_DSN": dsn,
        "REDIS_URL": redis_url,
        "JWT_SECRET": secrets.token_urlsafe(32),
        "ADMIN_PASSWORD": ADMIN_PASSWORD,
        "TOLLGATE_KEY_PEPPER": secrets.token_urlsafe(24),
    }


def wait_ready(url: str, container: Container, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not container.running():
            pytest.fail(f"the gateway exited:\n{container.logs()[-3000:]}", pytrace=False)
        try:
            response = httpx.get(url + "/readyz", timeout=2)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.3)
    pytest.fail(f"/readyz did not answer 200 in {timeout:.0f}s: {last}", pytrace=False)


def test_gateway_image_migrates_waits_for_the_schema_and_serves_a_chat(
    chart: list[Manifest],
    fresh_dsn: str,
    valkey: LocalValkey,
    standin: StandinProcess,
    containers: Callable[..., Container],
) -> None:
    job = workload(chart, "Job", "migration")
    deployment = workload(chart, "Deployment", "gateway")
    env = secrets_env(fresh_dsn, valkey.url)

    # The Deployment's init container holds the gateway back while the schema is missing.
    early = Container(
        **chart_container(deployment, "wait-for-schema", {**env, "WAIT_SECONDS": "1"})
    )
    result = early.run(timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "schema not ready" in result.stderr

    # The migration Job: wait for the database, then migrate.
    for name in ("wait-for-database", "migrate"):
        result = Container(**chart_container(job, name, env)).run(timeout=180)
        assert result.returncode == 0, f"{name}:\n{result.stdout}{result.stderr}"
    with psycopg.connect(fresh_dsn) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()

    result = Container(**chart_container(deployment, "wait-for-schema", env)).run(timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

    port = free_port()
    serving: dict[str, Any] = chart_container(
        deployment,
        "gateway",
        {
            **env,
            "TOLLGATE_HOST": "127.0.0.1",  # the host's network: loopback and a free port
            "TOLLGATE_PORT": str(port),
            "OLLAMA_BASE_URL": standin.url,
            "ADMIN_EMAIL": ADMIN_EMAIL,
        },
    )
    assert serving["args"] == ["serve"]
    gateway = containers(**serving)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, gateway)

    admin = Admin(url)
    try:
        admin.ensure_model("image-chat", "llama3:8b")
        key = admin.create_key()["key"]
    finally:
        admin.http.close()
    response = httpx.post(
        url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "image-chat", "messages": [{"role": "user", "content": "hello"}]},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "image-chat"
    assert body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] > 0
    seen = httpx.get(standin.url + "/_standin/requests?path=/v1/chat", timeout=5).json()
    assert any(r["body"]["model"] == "llama3:8b" for r in seen["requests"])
    # The image ships the console's static export and the gateway serves it: the page, with
    # its inline scripts allowed by hash, and the hashed assets it loads.
    page = httpx.get(url + "/console/", timeout=10)
    assert page.status_code == 200, page.text[:300]
    assert page.headers["content-type"].startswith("text/html")
    assert page.text.lstrip().lower().startswith("<!doctype html>")
    assert "'sha256-" in page.headers["content-security-policy"]
    assets = re.findall(r'(?:src|href)="(/console/_next/static/[^"]+)"', page.text)
    assert assets, page.text[:500]
    for asset in assets[:3]:
        loaded = httpx.get(url + asset, timeout=10)
        assert loaded.status_code == 200, asset
        assert "immutable" in loaded.headers["cache-control"]
        assert loaded.content
    # The logs are JSON lines (the chart's default), never the key.
    logs = gateway.logs()
    assert '"level"' in logs and key not in logs


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("JWT_SECRET", "change-me", "JWT_SECRET"),
        ("JWT_SECRET", secrets.token_hex(15), "JWT_SECRET"),  # 30 characters
        ("ADMIN_PASSWORD", "ChangeMe", "ADMIN_PASSWORD"),
    ],
)
def test_gateway_image_refuses_weak_secrets(
    chart: list[Manifest], postgres: LocalPostgres, variable: str, value: str, reason: str
) -> None:
    deployment = workload(chart, "Deployment", "gateway")
    env = {**secrets_env(postgres.dsn, "redis://127.0.0.1:1/0"), variable: value}
    env |= {"TOLLGATE_HOST": "127.0.0.1", "TOLLGATE_PORT": str(free_port())}
    result = Container(**chart_container(deployment, "gateway", env)).run(timeout=120)
    assert result.returncode != 0
    assert reason in result.stdout + result.stderr
    assert value not in result.stdout + result.stderr
