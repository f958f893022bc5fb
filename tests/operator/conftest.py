"""Fixtures for the operator's integration tests (helpers: operator_harness.py)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_harness import (
    CRDS,
    PEPPER,
    PULL_DELAY_MS,
    FakeCluster,
    Kube,
    OperatorProcess,
    operator_env,
    wait_for,
)

from tollgate_dev.plugins.cluster import ClusterHandle
from tollgate_dev.plugins.services import Gateways
from tollgate_dev.servers.backing import LocalValkey
from tollgate_dev.servers.jaeger import JaegerServer
from tollgate_dev.servers.programs import GatewayProcess

# What a failure report needs: set by the `operator` fixture.
_session_cluster: dict[str, Any] = {}


@pytest.fixture(scope="session")
def kube_api(k8s_cluster: ClusterHandle) -> Iterator[client.ApiClient]:
    api = k8s_cluster.api_client()
    yield api
    api.close()


@pytest.fixture(scope="session")
def crds(k8s_cluster: ClusterHandle) -> list[str]:
    """The CRDs from crds/, applied and established."""
    k8s_cluster.kubectl("apply", "--server-side", "-f", str(CRDS))
    names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in sorted(CRDS.glob("*.yaml"))]
    k8s_cluster.wait_established(*[f"crd/{n}" for n in names])
    return names


@pytest.fixture(scope="session")
def op_gateway(gateways: Gateways) -> GatewayProcess:
    """A gateway sharing the operator's key pepper."""
    return gateways.start(TOLLGATE_KEY_PEPPER=PEPPER)


@pytest.fixture(scope="session")
def fake_cluster(kube_api: client.ApiClient, service_dir: Path) -> Iterator[FakeCluster]:
    fake = FakeCluster(kube_api, service_dir, ["--pull-delay-ms", str(PULL_DELAY_MS)])
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def operator(
    k8s_cluster: ClusterHandle,
    crds: list[str],
    migrated_dsn: str,
    op_gateway: GatewayProcess,
    fake_cluster: FakeCluster,
    service_dir: Path,
    jaeger: JaegerServer,
    valkey: LocalValkey,
) -> Iterator[OperatorProcess]:
    env = operator_env(k8s_cluster, migrated_dsn, op_gateway.url, valkey.url)
    env["TOLLGATE_OTLP_ENDPOINT"] = jaeger.otlp_endpoint  # reconciles are traced
    proc = OperatorProcess(env, log_path=service_dir / "operator.log")
    proc.start()
    wait_for("the operator to lead", proc.leading)
    _session_cluster["operator"] = proc
    _session_cluster["handle"] = k8s_cluster
    yield proc
    proc.stop()


@pytest.fixture
def namespace(kube_api: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(kube_api)
    name = f"op-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    with contextlib.suppress(ApiException):
        core.delete_namespace(name)


@pytest.fixture(scope="session")
def kube(kube_api: client.ApiClient) -> Kube:
    return Kube(kube_api)


@pytest.fixture(scope="session")
def db(migrated_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        yield conn


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On a failure, attach what a person would look at: the namespace's objects and Events,
    and the end of the operator's log."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    cluster: ClusterHandle | None = _session_cluster.get("handle")
    namespace = funcargs.get("namespace")
    if cluster is not None and namespace:
        out = cluster.kubectl(
            "get",
            "all,pvc,apikeys,modelaliases,ollamapools,events",
            "-n",
            namespace,
            "-o",
            "wide",
            check=False,
        )
        report.sections.append(("kubectl get (namespace)", out.stdout + out.stderr))
    proc = _session_cluster.get("operator")
    if isinstance(proc, OperatorProcess):
        report.sections.append(("operator log (tail)", proc.log_tail(80)))
