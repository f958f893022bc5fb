"""Orphaned managed rows: a key or alias whose resource vanished while no operator watched
(etcd wiped or restored, a finalizer removed by hand) is revoked / disabled after the
orphan grace, with a log line, a metric and an audit row; an admin may take it over."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from operator_harness import FakeCluster, Kube, OperatorProcess, operator_env, wait_for

from tollgate_dev.plugins.cluster import ClusterHandle
from tollgate_dev.plugins.services import Admin
from tollgate_dev.servers.programs import GatewayProcess, StandinProcess

pytestmark = pytest.mark.cluster

GRACE = 6.0


@pytest.fixture
def session_operator_paused(operator: OperatorProcess) -> Iterator[None]:
    """The session's operator (every namespace, default grace) steps aside meanwhile."""
    operator.stop()
    try:
        yield
    finally:
        operator.start()
        wait_for("the session operator to lead again", operator.leading)


def api_key(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "ApiKey",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"owner": "orphan-test"},
    }


def status_of(gateway: GatewayProcess, key: str, model: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    if model is None:
        return httpx.get(gateway.url + "/v1/models", headers=headers, timeout=10).status_code
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    return httpx.post(
        gateway.url + "/v1/chat/completions", headers=headers, json=body, timeout=30
    ).status_code


def metric(proc: OperatorProcess, name: str, kind: str) -> float:
    match = re.search(rf'^{name}\{{kind="{kind}"\}} (\S+)$', proc.metrics(), re.M)
    return float(match.group(1)) if match else 0.0


def test_orphaned_key_and_alias_are_released_after_the_grace(
    session_operator_paused: None,
    fake_cluster: FakeCluster,
    op_gateway: GatewayProcess,
    standin: StandinProcess,
    kube: Kube,
    namespace: str,
    db: psycopg.Connection[Any],
    k8s_cluster: ClusterHandle,
    migrated_dsn: str,
    service_dir: Path,
) -> None:
    env = {
        **operator_env(k8s_cluster, migrated_dsn, op_gateway.url),
        "TOLLGATE_LEADER_ELECTION": "false",
        "TOLLGATE_ORPHAN_GRACE_SECONDS": str(GRACE),
        "TOLLGATE_ORPHAN_SWEEP_SECONDS": "1",
    }
    log = service_dir / f"operator-orphans-{namespace}.log"
    proc = OperatorProcess(
        env, log_path=log, identity="orphan-operator", scope=("--namespace", namespace)
    )
    proc.start()
    try:
        wait_for("the operator to lead", proc.leading)
        for name in ("kept", "doomed"):
            kube.create(api_key(namespace, name))
        keys = {}
        for name in ("kept", "doomed"):
            wait_for(f"ApiKey {name} Ready", lambda n=name: kube.ready("apikeys", namespace, n))
            keys[name] = (kube.secret(namespace, f"{name}-api-key") or {})["api-key"]
        # A managed alias whose ModelAlias is gone (as after etcd was wiped), on the stand-in.
        alias = f"orphan-{namespace}"
        alias_id = uuid.uuid4()
        db.execute(
            "INSERT INTO models (id, alias, backend_tag, backend_url, managed_by) "
            "VALUES (%s, %s, 'llama3:8b', %s, %s)",
            (alias_id, alias, standin.url, f"operator:{namespace}/gone"),
        )
        # The key's resource goes while no operator watches: nothing revokes its row.
        proc.stop()
        kube.objects.patch_namespaced_custom_object(
            "tollgate.dev", "v1alpha1", namespace, "apikeys", "doomed",
            {"metadata": {"finalizers": []}},
        )  # fmt: skip
        kube.delete("apikeys", namespace, "doomed")
        wait_for("ApiKey doomed gone", lambda: kube.gone("apikeys", namespace, "doomed"))
        assert status_of(op_gateway, keys["doomed"]) == 200
        assert status_of(op_gateway, keys["doomed"], alias) == 200

        started = time.monotonic()
        proc.start()
        wait_for("the operator to lead again", proc.leading)

        def revoked() -> bool:
            row = db.execute(
                "SELECT revoked_at FROM api_keys WHERE managed_by = %s",
                (f"operator:{namespace}/doomed",),
            ).fetchone()
            return row is not None and row[0] is not None

        wait_for("the orphaned key to be revoked", revoked, timeout=GRACE + 60)
        assert time.monotonic() - started >= GRACE  # not before the grace
        wait_for("the orphaned alias to be disabled", lambda: not db.execute(
            "SELECT enabled FROM models WHERE id = %s", (alias_id,)
        ).fetchone()[0])  # fmt: skip

        # The gateway refuses both now; the key whose resource exists is untouched.
        wait_for("the revoked key refused", lambda: status_of(op_gateway, keys["doomed"]) == 401)
        wait_for(
            "the disabled alias refused", lambda: status_of(op_gateway, keys["kept"], alias) == 404
        )
        assert status_of(op_gateway, keys["kept"]) == 200
        (kept_revoked,) = db.execute(
            "SELECT revoked_at FROM api_keys WHERE managed_by = %s", (f"operator:{namespace}/kept",)
        ).fetchone()
        assert kept_revoked is None

        # One log line each, a metric, an audit row with the resource as actor; and two
        # normal starts log no error (kopf's retried first lists are warnings).
        text = log.read_text()
        errors = [line for line in text.splitlines() if '"severity": "error"' in line]
        assert not errors, errors
        assert re.search(
            rf"orphaned key '{namespace}/doomed' revoked: its ApiKey {namespace}/doomed has not "
            "existed",
            text,
        )
        assert re.search(
            rf"orphaned alias '{alias}' disabled: its ModelAlias {namespace}/gone has not existed",
            text,
        )
        assert metric(proc, "tollgate_operator_orphans_released_total", "key") == 1.0
        assert metric(proc, "tollgate_operator_orphans_released_total", "model") == 1.0
        audit = db.execute(
            "SELECT action, target_type FROM audit_events WHERE actor = %s OR actor = %s "
            "ORDER BY id",
            (f"operator:{namespace}/doomed", f"operator:{namespace}/gone"),
        ).fetchall()
        assert ("key.revoke", "key") in audit and ("model.update", "model") in audit

        # Still managed, so the admin API refuses to delete it, until an admin releases it.
        admin = Admin(op_gateway.url)
        refused = admin.http.delete(f"/admin/models/{alias_id}")
        assert refused.status_code == 409 and "/release" in refused.json()["error"]["message"]
        released = admin.http.post(f"/admin/models/{alias_id}/release")
        assert released.status_code == 200 and released.json()["managed_by"] is None
        assert admin.http.delete(f"/admin/models/{alias_id}").status_code == 204
        admin.http.close()
    finally:
        proc.stop()
