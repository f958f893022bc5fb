"""Admin API shapes: lists as lists, money as fixed-scale decimal strings, usage groups with
id and name, refused requests in usage, 204 for every DELETE."""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

import httpx
import psycopg

from tollgate_dev.plugins.services import Admin
from tollgate_dev.servers.programs import GatewayProcess

MONEY = re.compile(r"^\d+\.\d{8}$")


def test_lists_come_back_as_lists_and_money_at_a_fixed_scale(admin: Admin) -> None:
    created = admin.create_key(allowed_models=["llama3", "text-embedding-*"], monthly_budget="1")
    assert created["allowed_models"] == ["llama3", "text-embedding-*"]
    assert created["monthly_budget"] == "1.00000000"  # not "1" on create
    again = admin.http.get(f"/admin/keys/{created['id']}").json()
    assert again["allowed_models"] == ["llama3", "text-embedding-*"]
    assert again["monthly_budget"] == "1.00000000"
    listed = {k["id"]: k for k in admin.http.get("/admin/keys").json()}
    assert listed[created["id"]]["allowed_models"] == ["llama3", "text-embedding-*"]
    # A comma-separated string is still accepted, and answered as a list.
    patched = admin.http.patch(
        f"/admin/keys/{created['id']}", json={"allowed_models": "a, b", "monthly_budget": "0.5"}
    ).json()
    assert patched["allowed_models"] == ["a", "b"] and patched["monthly_budget"] == "0.50000000"
    budget = admin.http.get(f"/admin/keys/{created['id']}/budget").json()
    assert (budget["monthly_budget"], budget["spent"], budget["remaining"]) == (
        "0.50000000",
        "0.00000000",  # never "0E-8"
        "0.50000000",
    )

    alias = "shapes-" + secrets.token_hex(3)
    model = admin.http.post(
        "/admin/models",
        json={"alias": alias, "backend_tag": "llama3:8b", "input_price_per_mtok": "0.00000001"},
    ).json()
    assert model["input_price_per_mtok"] == "0.00000001"  # not "1E-8"
    assert model["output_price_per_mtok"] == "0.00000000"
    for row in admin.http.get("/admin/models").json():
        assert MONEY.match(row["input_price_per_mtok"]) and MONEY.match(
            row["output_price_per_mtok"]
        )


def test_every_delete_answers_204_without_a_body(admin: Admin) -> None:
    key = admin.create_key()
    model = admin.ensure_model("delete-me-" + secrets.token_hex(3), "llama3:8b")
    app = admin.http.post("/admin/apps", json={"name": "app-" + secrets.token_hex(3)}).json()
    user = admin.http.post(
        "/admin/users",
        json={"email": f"u{secrets.token_hex(3)}@example.org", "password": "a-long-password"},
    ).json()
    for path in (
        f"/admin/keys/{key['id']}",
        f"/admin/models/{model['id']}",
        f"/admin/apps/{app['id']}",
        f"/admin/users/{user['id']}",
    ):
        response = admin.http.delete(path)
        assert (response.status_code, response.content) == (204, b""), path
    # A key is revoked, not erased: it stays readable, with its revocation time.
    assert admin.http.get(f"/admin/keys/{key['id']}").json()["revoked_at"] is not None


def _usage(admin: Admin, group_by: str, match: Any, requests: int) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        rows = admin.http.get("/admin/usage", params={"group_by": group_by}).json()["rows"]
        mine = [r for r in rows if match(r)]
        if (mine and mine[0]["requests"] >= requests) or time.monotonic() > deadline:
            assert mine, rows
            return dict(mine[0])
        time.sleep(0.1)


def test_usage_groups_have_id_and_name_and_count_refusals(
    gateway: GatewayProcess, admin: Admin, chat_model: str, migrated_dsn: str
) -> None:
    name = "usage-shape-" + secrets.token_hex(3)
    key = admin.create_key(name=name, rate_limit_rpm=1, app="shapes-app")
    headers = {"Authorization": f"Bearer {key['key']}"}
    body = {"model": chat_model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4}
    url = gateway.url + "/v1/chat/completions"
    assert httpx.post(url, json=body, headers=headers, timeout=30).status_code == 200
    assert httpx.post(url, json=body, headers=headers, timeout=30).status_code == 429

    row = _usage(admin, "key", lambda r: r["id"] == key["id"], 2)
    assert row["name"] == name and row["group"] == key["id"]
    assert (row["requests"], row["errors"], row["refused"]) == (2, 1, 1)
    assert row["completion_tokens"] > 0 and MONEY.match(row["cost"])

    by_alias = _usage(admin, "alias", lambda r: r["name"] == chat_model, 1)
    model = next(m for m in admin.http.get("/admin/models").json() if m["alias"] == chat_model)
    assert by_alias["id"] == model["id"]

    # The refused request is a usage row of its own: status, reason, no tokens, no cost.
    with psycopg.connect(migrated_dsn) as conn:
        refused = conn.execute(
            "SELECT status, error_class, prompt_tokens, completion_tokens, cost, alias "
            "FROM usage_events WHERE key_id = %s AND status = 429",
            (key["id"],),
        ).fetchall()
    assert [(r[0], r[1], r[2], r[3], float(r[4]), r[5]) for r in refused] == [
        (429, "limit_requests", 0, 0, 0.0, chat_model)
    ]


def test_every_documented_request_body_has_an_example(gateway: GatewayProcess) -> None:
    doc = httpx.get(gateway.url + "/openapi.json", timeout=10).json()
    schemas = doc["components"]["schemas"]
    missing = []
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            body = operation.get("requestBody")
            if body is None:
                continue
            content = body["content"]["application/json"]
            schema = content.get("schema", {})
            if "$ref" in schema:
                schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
            if not ("example" in content or "examples" in content or "examples" in schema):
                missing.append(f"{method.upper()} {path}")
    assert not missing
    login = doc["paths"]["/admin/login"]["post"]["responses"]["200"]["content"]
    token = schemas[login["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]
    assert token["properties"]["expires_in"]["description"]  # documented, in seconds
    assert "24 h" in str(doc["paths"]["/admin/usage"]["get"]["parameters"])
