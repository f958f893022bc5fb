"""An alias still pulling answers 503 "not ready yet" with Retry-After to keys that may use
it; to other keys, and for an alias disabled on purpose, it does not exist (404)."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import httpx
import psycopg

from tollgate_dev.plugins.services import Admin
from tollgate_dev.servers.programs import GatewayProcess, StandinProcess


def _chat(gateway: GatewayProcess, key: str, model: str, path: str = "/v1/chat/completions") -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False}
    return httpx.post(
        gateway.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def test_a_pending_alias_is_not_ready_yet(
    gateway: GatewayProcess, admin: Admin, migrated_dsn: str, standin: StandinProcess
) -> None:
    pulling, off = (f"{n}-{secrets.token_hex(3)}" for n in ("pulling", "off"))
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        for alias, pending in ((pulling, True), (off, False)):
            conn.execute(
                "INSERT INTO models (id, alias, backend_tag, backend_url, enabled, pending) "
                "VALUES (%s, %s, 'llama3:8b', %s, false, %s)",
                (uuid.uuid4(), alias, standin.url, pending),
            )
    allowed = admin.create_key(allowed_models=["pulling-*", "off-*"])["key"]
    other = admin.create_key(allowed_models=["something-else"])["key"]

    for path in ("/v1/chat/completions", "/api/chat"):
        response = _chat(gateway, allowed, pulling, path)
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "10"
        assert "not ready yet" in response.text
    refused = _chat(gateway, allowed, pulling).json()["error"]
    assert refused["code"] == "model_not_ready"
    assert _chat(gateway, other, pulling).status_code == 404  # nothing told to outsiders
    assert _chat(gateway, allowed, off).status_code == 404
    listed = {m["alias"]: m for m in admin.http.get("/admin/models").json()}
    assert listed[pulling]["pending"] is True and listed[off]["pending"] is False
