"""Admin tokens die with the password they were issued for, and with the account."""

from __future__ import annotations

import secrets

import httpx

from tollgate_dev.plugins.services import Admin
from tollgate_dev.servers.programs import GatewayProcess


def login(gateway: GatewayProcess, email: str, password: str) -> httpx.Client:
    client = httpx.Client(base_url=gateway.url, timeout=30)
    r = client.post("/admin/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    client.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
    return client


def new_user(admin: Admin, role: str) -> tuple[str, str, str]:
    email = f"user-{secrets.token_hex(4)}@tollgate.test"
    password = "first-password-" + secrets.token_hex(4)
    r = admin.http.post("/admin/users", json={"email": email, "password": password, "role": role})
    assert r.status_code == 201, r.text
    return r.json()["id"], email, password


def test_password_change_invalidates_older_tokens(gateway: GatewayProcess, admin: Admin) -> None:
    user_id, email, password = new_user(admin, "admin")
    old = login(gateway, email, password)
    other_device = login(gateway, email, password)
    assert old.get("/admin/me").status_code == 200
    changed = old.patch(f"/admin/users/{user_id}", json={"password": "second-password-xyz"})
    assert changed.status_code == 200, changed.text
    for client in (old, other_device):
        refused = client.get("/admin/me")
        assert refused.status_code == 401
        assert "log in again" in refused.json()["error"]["message"]
        assert client.get("/admin/keys").status_code == 401
    fresh = login(gateway, email, "second-password-xyz")
    assert fresh.get("/admin/me").status_code == 200
    # and when an admin resets it for them
    assert admin.http.patch(
        f"/admin/users/{user_id}", json={"password": "third-password-xyz"}
    ).is_success
    assert fresh.get("/admin/me").status_code == 401


def test_disabled_user_tokens_are_refused(gateway: GatewayProcess, admin: Admin) -> None:
    user_id, email, password = new_user(admin, "viewer")
    viewer = login(gateway, email, password)
    assert viewer.get("/admin/keys").status_code == 200
    assert admin.http.patch(f"/admin/users/{user_id}", json={"disabled": True}).is_success
    assert viewer.get("/admin/keys").status_code == 401
    assert admin.http.patch(f"/admin/users/{user_id}", json={"disabled": False}).is_success
    assert viewer.get("/admin/keys").status_code == 200  # the same password: valid again
