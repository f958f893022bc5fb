"""The audit log through a real gateway and Postgres: every admin change, in order, with
its actor; read-only for viewers and admins alike; no secrets in any row."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import psycopg

from tollgate_dev.plugins.services import ADMIN_EMAIL, ADMIN_PASSWORD, Admin
from tollgate_dev.servers.programs import GatewayProcess


def events_for(admin: Admin, **params: Any) -> list[dict[str, Any]]:
    response = admin.http.get("/admin/audit", params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["events"])


def login(gateway: GatewayProcess, email: str, password: str) -> httpx.Client:
    client = httpx.Client(base_url=gateway.url, timeout=30)
    token = client.post("/admin/login", json={"email": email, "password": password})
    assert token.status_code == 200, token.text
    client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    return client


def test_scripted_admin_sequence_is_recorded_in_order(
    gateway: GatewayProcess, admin: Admin, migrated_dsn: str
) -> None:
    tag = secrets.token_hex(3)
    actor = f"user:{ADMIN_EMAIL.lower()}"
    http = admin.http
    key = http.post("/admin/keys", json={"name": f"audit-{tag}", "rate_limit_rpm": 5}).json()
    assert http.patch(f"/admin/keys/{key['id']}", json={"rate_limit_rpm": 9}).status_code == 200
    assert http.delete(f"/admin/keys/{key['id']}").status_code == 204
    model = http.post("/admin/models", json={"alias": f"a-{tag}", "backend_tag": "x:1"}).json()
    assert http.patch(f"/admin/models/{model['id']}", json={"enabled": False}).status_code == 200
    assert http.delete(f"/admin/models/{model['id']}").status_code == 204
    email = f"audited-{tag}@tollgate.test"
    user = http.post("/admin/users", json={"email": email, "password": "first-password-1"}).json()
    patch = http.patch(f"/admin/users/{user['id']}", json={"password": "second-password-2"})
    assert patch.status_code == 200
    assert http.patch(f"/admin/users/{user['id']}", json={"disabled": True}).status_code == 200
    app = http.post("/admin/apps", json={"name": f"app-{tag}"}).json()
    assert http.delete(f"/admin/apps/{app['id']}").status_code == 204

    mine = [e for e in events_for(admin, actor=actor, limit=500) if tag in (e["target_name"] or "")]
    mine.reverse()  # oldest first
    assert [e["action"] for e in mine] == [
        "key.create",
        "key.update",
        "key.revoke",
        "model.create",
        "model.update",
        "model.delete",
        "user.create",
        "user.password_change",
        "user.disable",
        "app.create",
        "app.delete",
    ]
    assert all(e["actor"] == actor and e["source"] == "admin_api" for e in mine)
    assert all(e["request_id"] for e in mine)
    update = mine[1]
    assert (update["before"], update["after"]) == ({"rate_limit_rpm": 5}, {"rate_limit_rpm": 9})
    assert mine[0]["target_id"] == key["id"] and mine[0]["after"]["key_prefix"]
    assert mine[5]["before"]["alias"] == f"a-{tag}" and mine[5]["after"] is None
    assert mine[7]["before"] is None and mine[7]["after"] is None  # the hash never shows

    # no secrets anywhere in the table: neither the key nor any hash
    with psycopg.connect(migrated_dsn) as conn:
        dump = str(conn.execute("SELECT before, after FROM audit_events").fetchall())
        hashes = [r[0] for r in conn.execute("SELECT key_hash FROM api_keys").fetchall()]
        hashes += [r[0] for r in conn.execute("SELECT password_hash FROM users").fetchall()]
    assert key["key"] not in dump
    assert not [h for h in hashes if h in dump]


def test_logins_are_recorded_and_failures_summarised(gateway: GatewayProcess, admin: Admin) -> None:
    email = f"nobody-{secrets.token_hex(3)}@tollgate.test"
    for _ in range(5):
        r = httpx.post(gateway.url + "/admin/login", json={"email": email, "password": "nope"})
        assert r.status_code in (401, 429)
    failed = events_for(admin, action="user.login_failed")
    mine = [e for e in failed if e["target_name"] == email]
    assert len(mine) == 1  # one row per email and minute, not one per attempt
    assert mine[0]["actor"] == "anonymous" and mine[0]["after"]["client"] == "127.0.0.1"
    newest = events_for(admin, limit=1)[0]["id"]
    login(gateway, ADMIN_EMAIL, ADMIN_PASSWORD).close()
    ok = events_for(admin, action="user.login", limit=5)
    assert ok[0]["id"] > newest
    assert ok[0]["actor"] == f"user:{ADMIN_EMAIL.lower()}"
    assert ok[0]["after"]["client"] == "127.0.0.1"


def test_viewer_reads_nobody_writes_and_paging(gateway: GatewayProcess, admin: Admin) -> None:
    email = f"viewer-{secrets.token_hex(3)}@tollgate.test"
    created = admin.http.post("/admin/users", json={"email": email, "password": "viewer-pass-123"})
    assert created.status_code == 201
    viewer = login(gateway, email, "viewer-pass-123")
    page = viewer.get("/admin/audit", params={"limit": 2})
    assert page.status_code == 200
    body = page.json()
    assert len(body["events"]) == 2 and body["next_before_id"] == body["events"][-1]["id"]
    older = viewer.get("/admin/audit", params={"limit": 2, "before_id": body["next_before_id"]})
    assert all(e["id"] < body["next_before_id"] for e in older.json()["events"])
    for client in (viewer, admin.http):
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            assert client.request(method, "/admin/audit").status_code == 405
    assert httpx.get(gateway.url + "/admin/audit").status_code == 401
    bad = viewer.get("/admin/audit", params={"since": "2026-11-01T00:00:00"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
    viewer.close()
