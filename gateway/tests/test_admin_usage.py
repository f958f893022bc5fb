"""Admin API and usage events, against a real gateway and Postgres."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import psycopg
import pytest

from tollgate_dev.plugins.services import Admin
from tollgate_dev.servers.programs import GatewayProcess

NewKey = Callable[..., dict[str, Any]]


def wait_for_rows(dsn: str, sql: str, params: tuple[Any, ...], count: int) -> list[Any]:
    deadline = time.monotonic() + 15
    while True:
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(sql, params).fetchall()
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_usage_event_per_request(
    gateway: GatewayProcess, new_key: NewKey, chat_model: str, migrated_dsn: str
) -> None:
    key = new_key(app="billing")
    c = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model=chat_model, messages=[{"role": "user", "content": "hi"}]
    )
    result = raw.parse()
    stream = list(
        c.chat.completions.create(
            model=chat_model, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert stream
    rows = wait_for_rows(
        migrated_dsn,
        "SELECT request_id, app, alias, backend_tag, endpoint, status, prompt_tokens, "
        "completion_tokens, cost, streamed, ttft_ms FROM usage_events WHERE key_id = %s "
        "ORDER BY ts",
        (key["id"],),
        2,
    )
    assert len(rows) == 2
    first, second = rows
    assert first[0] == raw.headers["x-request-id"]
    assert first[1:6] == ("billing", chat_model, "llama3:8b", "chat.completions", 200)
    assert result.usage is not None
    assert (first[6], first[7]) == (result.usage.prompt_tokens, result.usage.completion_tokens)
    assert first[8] > 0 and first[9] is False
    assert second[9] is True and second[7] > 0 and second[10] is not None


def test_client_disconnect_mid_stream_is_recorded(
    gateway: GatewayProcess, new_key: NewKey, chat_model: str, migrated_dsn: str
) -> None:
    key = new_key()
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key['key']}"},
        json={"model": chat_model, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                break  # leave after the first chunk
    rows = wait_for_rows(
        migrated_dsn, "SELECT status FROM usage_events WHERE key_id = %s", (key["id"],), 1
    )
    assert len(rows) == 1


def test_admin_roles_and_key_lifecycle(gateway: GatewayProcess, admin: Admin) -> None:
    email = f"viewer{time.time_ns()}@tollgate.test"
    created = admin.http.post(
        "/admin/users", json={"email": email, "password": "viewer-password-123"}
    )
    assert created.status_code == 201, created.text
    viewer = httpx.Client(base_url=gateway.url)
    token = viewer.post(
        "/admin/login", json={"email": email, "password": "viewer-password-123"}
    ).json()
    viewer.headers["Authorization"] = f"Bearer {token['access_token']}"
    assert viewer.get("/admin/keys").status_code == 200
    denied = viewer.post("/admin/keys", json={"name": "nope"})
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"

    key = admin.create_key(rate_limit_rpm=5, allowed_models="gpt-*,llama*")
    assert key["key"].startswith("tg-") and key["key_prefix"] == key["key"][:11]
    listed = {k["id"]: k for k in admin.http.get("/admin/keys").json()}
    assert "key" not in listed[key["id"]]
    assert listed[key["id"]]["allowed_models"] == ["gpt-*", "llama*"]
    patched = admin.http.patch(f"/admin/keys/{key['id']}", json={"rate_limit_rpm": 7})
    assert patched.json()["rate_limit_rpm"] == 7
    budget = admin.http.get(f"/admin/keys/{key['id']}/budget").json()
    assert budget["monthly_budget"] is None and budget["spent"] == "0.00000000"
    assert admin.http.delete(f"/admin/keys/{key['id']}").status_code == 204
    assert admin.http.get(f"/admin/keys/{key['id']}").json()["revoked_at"]


def test_admin_rejects_bad_input_and_bad_login(gateway: GatewayProcess, admin: Admin) -> None:
    assert (
        httpx.post(
            gateway.url + "/admin/login", json={"email": "x@y.z", "password": "wrong"}
        ).status_code
        == 401
    )
    assert httpx.get(gateway.url + "/admin/keys").status_code == 401
    bad = admin.http.post("/admin/keys", json={"name": "x", "rate_limit_rpm": -1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rate_limit_rpm"
    dup = admin.http.post("/admin/models", json={"alias": "gpt-4", "backend_tag": "x"})
    assert dup.status_code == 409


def test_operator_managed_rows_are_not_edited_by_admin(admin: Admin, migrated_dsn: str) -> None:
    key = admin.create_key()
    with psycopg.connect(migrated_dsn) as conn:
        conn.execute(
            "UPDATE api_keys SET managed_by = 'operator:team-a/app' WHERE id = %s", (key["id"],)
        )
    response = admin.http.patch(f"/admin/keys/{key['id']}", json={"rate_limit_rpm": 1})
    assert response.status_code == 409
    assert "operator:team-a/app" in response.json()["error"]["message"]


def test_usage_summary(
    gateway: GatewayProcess, admin: Admin, new_key: NewKey, chat_model: str
) -> None:
    key = new_key()
    c = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    for _ in range(3):
        c.chat.completions.create(model=chat_model, messages=[{"role": "user", "content": "x"}])
    deadline = time.monotonic() + 15
    while True:
        rows = admin.http.get("/admin/usage", params={"group_by": "key"}).json()["rows"]
        mine = [r for r in rows if r["group"] == key["id"]]
        if (mine and mine[0]["requests"] == 3) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert mine and mine[0]["requests"] == 3
    assert mine[0]["completion_tokens"] > 0 and float(mine[0]["cost"]) > 0
    assert mine[0]["latency_p50_ms"] is not None
    by_alias = admin.http.get("/admin/usage", params={"group_by": "alias"}).json()["rows"]
    assert any(r["group"] == chat_model for r in by_alias)


@pytest.mark.parametrize("jwt", ["", "secret", "short"])
def test_refuses_weak_secrets_outside_dev_mode(jwt: str) -> None:
    env = {**os.environ, "JWT_SECRET": jwt, "TOLLGATE_DEV_MODE": "false"}
    result = subprocess.run(
        [sys.executable, "-m", "tollgate_gateway.cli", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "JWT_SECRET" in result.stderr


def test_refuses_to_serve_old_schema(postgres: Any, service_dir: Any) -> None:
    import psycopg as pg

    with pg.connect(postgres.dsn.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS unmigrated")
        conn.execute("CREATE DATABASE unmigrated")
    env = {
        **os.environ,
        "POSTGRES_DSN": postgres.dsn.rsplit("/", 1)[0] + "/unmigrated",
        "JWT_SECRET": "y" * 40,
        "TOLLGATE_KEY_PEPPER": "z" * 32,
        "TOLLGATE_PORT": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "tollgate_gateway.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "migrate" in result.stderr


def test_serves_on_a_newer_schema_and_reports_it(
    postgres: Any, valkey: Any, standin: Any, service_dir: Any
) -> None:
    """After a newer gateway migrated (upgrade in progress, or a rollback), older gateways
    keep serving: migrations are backward compatible. An older schema is refused."""
    from tollgate_dev.plugins.services import gateway_env
    from tollgate_dev.servers.programs import GatewayProcess
    from tollgate_gateway.cli import migrate
    from tollgate_gateway.config import Settings

    base = postgres.dsn.rsplit("/", 1)[0]
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS newer")
        conn.execute("CREATE DATABASE newer")
    dsn = base + "/newer"
    migrate(Settings(postgres_dsn=dsn))
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    gateway = GatewayProcess(
        gateway_env(dsn, valkey.url, standin.url), log_path=service_dir / "newer-schema-gateway.log"
    )
    gateway.start()
    try:
        ready = httpx.get(gateway.url + "/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["schema"] == "ok"
    finally:
        gateway.stop()


def check_settings(**env: str) -> subprocess.CompletedProcess[str]:
    strong = {"JWT_SECRET": "j" * 40, "TOLLGATE_KEY_PEPPER": "p" * 32, "TOLLGATE_DEV_MODE": "false"}
    return subprocess.run(
        [sys.executable, "-m", "tollgate_gateway.cli", "check"],
        env={**os.environ, **strong, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("pepper", ["", "short-pepper"])
def test_refuses_to_start_without_a_pepper_outside_dev_mode(pepper: str) -> None:
    result = check_settings(TOLLGATE_KEY_PEPPER=pepper)
    assert result.returncode == 2
    assert "TOLLGATE_KEY_PEPPER" in result.stderr
    assert check_settings().returncode == 0
    assert check_settings(TOLLGATE_KEY_PEPPER=pepper, TOLLGATE_DEV_MODE="true").returncode == 0
