"""The operator's changes to keys land in the audit log, with the resource as the actor."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest
from operator_harness import Kube, OperatorProcess, wait_for

from tollgate_dev.gatewayproc import GatewayProcess
from tollgate_dev.pytest_services import ADMIN_EMAIL, ADMIN_PASSWORD

pytestmark = pytest.mark.cluster


def audit_actions(db: psycopg.Connection[Any], actor: str) -> list[tuple[str, Any, Any]]:
    return [
        (r[0], r[1], r[2])
        for r in db.execute(
            "SELECT action, before, after FROM audit_events WHERE actor = %s ORDER BY id",
            (actor,),
        ).fetchall()
    ]


def test_apikey_lifecycle_is_audited_with_the_resource_as_actor(
    kube: Kube,
    namespace: str,
    operator: OperatorProcess,
    op_gateway: GatewayProcess,
    db: psycopg.Connection[Any],
) -> None:
    actor = f"operator:{namespace}/audited"
    body = {
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "ApiKey",
        "metadata": {"name": "audited", "namespace": namespace},
        "spec": {
            "owner": "team-a",
            "limits": {"requestsPerMinute": 10},
            "rotation": {"token": "one", "gracePeriodSeconds": 1},
        },
    }
    kube.create(body)
    wait_for("ApiKey audited to be Ready", lambda: kube.ready("apikeys", namespace, "audited"))
    kube.patch("apikeys", namespace, "audited", {"limits": {"requestsPerMinute": 20}})
    wait_for(
        "the limit change in the audit log",
        lambda: any(a == "key.update" for a, _, _ in audit_actions(db, actor)),
    )
    kube.patch(
        "apikeys", namespace, "audited", {"rotation": {"token": "two", "gracePeriodSeconds": 1}}
    )
    wait_for(
        "the rotation in the audit log",
        lambda: any(a == "key.rotate" for a, _, _ in audit_actions(db, actor)),
    )
    kube.delete("apikeys", namespace, "audited")
    wait_for("the ApiKey to be gone", lambda: kube.gone("apikeys", namespace, "audited"))

    trail = audit_actions(db, actor)
    actions = [a for a, _, _ in trail]
    assert actions[0] == "key.create"
    assert actions.index("key.update") < actions.index("key.rotate")
    assert actions[-1] == "key.revoke"
    update = next(t for t in trail if t[0] == "key.update" and "rate_limit_rpm" in (t[2] or {}))
    assert (update[1]["rate_limit_rpm"], update[2]["rate_limit_rpm"]) == (10, 20)
    dump = str(trail)
    hashes = [
        r[0]
        for r in db.execute(
            "SELECT key_hash FROM api_keys WHERE managed_by = %s", (actor,)
        ).fetchall()
    ]
    assert hashes and not [h for h in hashes if h in dump]

    # an admin (and a viewer) reads the same trail through the API
    with httpx.Client(base_url=op_gateway.url, timeout=30) as http:
        token = http.post("/admin/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
        http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        listed = http.get("/admin/audit", params={"actor": actor, "limit": 500}).json()["events"]
    assert [e["action"] for e in reversed(listed)] == actions
    assert {e["source"] for e in listed} == {"operator"}
