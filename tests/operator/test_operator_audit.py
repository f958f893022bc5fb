"""The operator's changes to keys land in the audit log, with the resource as the actor."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest
from operator_harness import FakeCluster, Kube, OperatorProcess, wait_for

from tollgate_dev.plugins.services import ADMIN_EMAIL, ADMIN_PASSWORD
from tollgate_dev.servers.programs import GatewayProcess

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


def test_modelalias_lifecycle_is_audited(
    kube: Kube,
    namespace: str,
    operator: OperatorProcess,
    fake_cluster: FakeCluster,
    db: psycopg.Connection[Any],
) -> None:
    actor = f"operator:{namespace}/audited-chat"
    kube.create(
        {
            "apiVersion": "tollgate.dev/v1alpha1",
            "kind": "OllamaPool",
            "metadata": {"name": "llm", "namespace": namespace},
            "spec": {"replicas": 1, "gpus": 1, "storage": {"size": "1Gi"}},
        }
    )
    kube.create(
        {
            "apiVersion": "tollgate.dev/v1alpha1",
            "kind": "ModelAlias",
            "metadata": {"name": "audited-chat", "namespace": namespace},
            "spec": {
                "alias": f"audited-{namespace}",
                "model": "llama3.2:1b",
                "poolRef": {"name": "llm"},
            },
        }
    )
    wait_for(
        "alias audited-chat to be Ready",
        lambda: kube.ready("modelaliases", namespace, "audited-chat"),
        timeout=90,
    )
    kube.patch(
        "modelaliases", namespace, "audited-chat", {"prices": {"inputPerMillionTokens": "0.5"}}
    )
    wait_for(
        "the price change in the audit log",
        lambda: any(
            a == "model.update" and "input_price_per_mtok" in (after or {})
            for a, _, after in audit_actions(db, actor)
        ),
    )
    kube.delete("modelaliases", namespace, "audited-chat")
    wait_for("the alias to be gone", lambda: kube.gone("modelaliases", namespace, "audited-chat"))
    actions = [a for a, _, _ in audit_actions(db, actor)]
    assert actions[0] == "model.create" and actions[-1] == "model.delete"
    enabled = [
        (before, after)
        for a, before, after in audit_actions(db, actor)
        if a == "model.update" and "enabled" in (after or {})
    ]
    # pulled everywhere: enabled, and routed over the replica that holds the model
    assert [(b["enabled"], a["enabled"]) for b, a in enabled] == [(False, True)], enabled
    assert [r["name"] for r in enabled[0][1]["replicas"]] == ["llm-0"]
