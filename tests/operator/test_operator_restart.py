"""Crashes and replicas: the operator killed mid-reconcile converges without duplicate keys;
a restart changes nothing that is already right; of two replicas one works at a time."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from kubernetes import client
from operator_harness import PEPPER, FakeCluster, Kube, OperatorProcess, wait_for

from tollgate_dev.servers.backing import LocalPostgres
from tollgate_dev.servers.programs import GatewayProcess
from tollgate_schema.keys import hash_key

pytestmark = pytest.mark.cluster

KEYS = [f"key-{i}" for i in range(8)]


def api_key(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "ApiKey",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"owner": "restart-test", **spec},
    }


def resources(namespace: str, alias: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "tollgate.dev/v1alpha1",
            "kind": "OllamaPool",
            "metadata": {"name": "pool", "namespace": namespace},
            "spec": {"replicas": 1, "gpus": 1, "storage": {"size": "1Gi"}},
        },
        {
            "apiVersion": "tollgate.dev/v1alpha1",
            "kind": "ModelAlias",
            "metadata": {"name": "alias", "namespace": namespace},
            "spec": {"alias": alias, "model": "gemma3:1b", "poolRef": {"name": "pool"}},
        },
        *(api_key(namespace, name, limits={"requestsPerMinute": 100}) for name in KEYS),
    ]


def key_rows(db: psycopg.Connection[Any], namespace: str) -> dict[str, list[tuple[Any, ...]]]:
    found: dict[str, list[tuple[Any, ...]]] = {name: [] for name in KEYS}
    for managed_by, *rest in db.execute(
        "SELECT managed_by, id, key_hash, updated_at, revoked_at FROM api_keys "
        "WHERE managed_by LIKE %s ORDER BY managed_by",
        (f"operator:{namespace}/%",),
    ).fetchall():
        found[managed_by.rsplit("/", 1)[1]].append(tuple(rest))
    return found


def resyncs(proc: OperatorProcess, kind: str) -> float:
    pattern = (
        rf'tollgate_operator_reconciles_total\{{kind="{kind}",result="ok",trigger="resync"\}} (\S+)'
    )
    match = re.search(pattern, proc.metrics())
    return float(match.group(1)) if match else 0.0


def snapshot(kube: Kube, db: psycopg.Connection[Any], namespace: str, alias: str) -> Any:
    secrets = {name: kube.secret(namespace, f"{name}-api-key") for name in KEYS}
    statuses = {name: kube.get("apikeys", namespace, name)["status"]["keyId"] for name in KEYS}
    model = db.execute(
        "SELECT id, backend_tag, enabled, updated_at FROM models WHERE alias = %s", (alias,)
    ).fetchone()
    # A resourceVersion changes only when something is written.
    apps = client.AppsV1Api(kube.api)
    sts = apps.read_namespaced_stateful_set("pool", namespace).metadata.resource_version
    return secrets, statuses, key_rows(db, namespace), model, sts


def test_killed_mid_reconcile_converges_without_duplicates(
    operator: OperatorProcess,
    fake_cluster: FakeCluster,
    op_gateway: GatewayProcess,
    kube: Kube,
    namespace: str,
    db: psycopg.Connection[Any],
) -> None:
    alias = f"restart-{namespace}"
    for body in resources(namespace, alias):
        kube.create(body)
    # Kill it as soon as it has started writing.
    wait_for(
        "the first key Secret",
        lambda: any(kube.secret(namespace, f"{name}-api-key") for name in KEYS),
        timeout=30,
    )
    operator.kill()
    operator.start()

    for name in KEYS:
        wait_for(f"ApiKey {name} to be Ready", lambda n=name: kube.ready("apikeys", namespace, n))
    wait_for("the alias to be Ready", lambda: kube.ready("modelaliases", namespace, "alias"), 90)

    rows = key_rows(db, namespace)
    for name in KEYS:
        (row,) = rows[name]  # exactly one key per ApiKey: nothing minted twice
        key = kube.secret(namespace, f"{name}-api-key")["api-key"]  # type: ignore[index]
        assert row[1] == hash_key(key, PEPPER.encode())
        assert str(row[0]) == kube.get("apikeys", namespace, name)["status"]["keyId"]
        assert row[3] is None
    last = kube.secret(namespace, f"{KEYS[-1]}-api-key")["api-key"]  # type: ignore[index]
    response = httpx.get(
        op_gateway.url + "/v1/models", headers={"Authorization": f"Bearer {last}"}, timeout=10
    )
    assert response.status_code == 200

    # A restart (here another SIGKILL) changes nothing that is already right.
    before = snapshot(kube, db, namespace, alias)
    operator.kill()
    operator.start()
    wait_for("the operator to lead again", operator.leading)
    # Let every ApiKey and the alias be re-checked twice by the new process.
    wait_for("resyncs after the restart", lambda: resyncs(operator, "ApiKey") >= 2 * len(KEYS))
    wait_for("alias resyncs after the restart", lambda: resyncs(operator, "ModelAlias") >= 2)
    assert snapshot(kube, db, namespace, alias) == before


def test_two_replicas_one_leader(
    operator: OperatorProcess,
    kube: Kube,
    namespace: str,
    service_dir: Path,
) -> None:
    standby = OperatorProcess(
        operator.env, log_path=service_dir / "operator-standby.log", identity="standby"
    )
    standby.start()
    try:
        assert operator.leading()
        assert not standby.leading()  # it answers liveness, as a standby
        assert "tollgate_operator_leader 0.0" in standby.metrics()
        assert "tollgate_operator_leader 1.0" in operator.metrics()
        kube.create(api_key(namespace, "first"))
        wait_for("ApiKey first to be Ready", lambda: kube.ready("apikeys", namespace, "first"))

        # The leader dies without releasing the Lease; the standby takes over once it expires.
        operator.kill()
        wait_for("the standby to lead", standby.leading, timeout=30)
        kube.create(api_key(namespace, "second"))
        wait_for("ApiKey second to be Ready", lambda: kube.ready("apikeys", namespace, "second"))
    finally:
        standby.stop()  # releases the Lease: the first replica takes it back at once
        if operator.proc is None or operator.proc.poll() is not None:
            operator.start()
        wait_for("the first replica to lead again", operator.leading)
    assert "lost leadership" not in standby.log_tail(200)


def test_refuses_to_start_without_the_gateway_schema(
    operator: OperatorProcess, postgres: LocalPostgres, service_dir: Path
) -> None:
    """An empty database (migrations not run): the operator exits with a clear message."""
    with psycopg.connect(postgres.dsn.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS unmigrated")
        conn.execute("CREATE DATABASE unmigrated")
    proc = OperatorProcess(
        {**operator.env, "POSTGRES_DSN": postgres.dsn.rsplit("/", 1)[0] + "/unmigrated"},
        log_path=service_dir / "operator-unmigrated.log",
        identity="unmigrated",
    )
    proc.start(wait=False)
    assert proc.proc is not None
    assert proc.proc.wait(60) == 3
    assert "refusing to start: database schema is at nothing" in proc.log_tail()
