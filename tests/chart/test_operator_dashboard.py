"""Every panel of the operator dashboard returns data from a real Prometheus that scraped a
real operator at work: an ApiKey minted and its Secret repaired after a deletion, a pool with
a model pulled onto its replica, and a ModelAlias naming a pool that does not exist.

The operator authenticates as the chart's ServiceAccount, with the chart's RBAC and nothing
else: what it does here, it can do installed by the chart. It runs against a control plane of
its own (not the session's `k8s_cluster`, where
the operator's own tests run a cluster-wide operator that would reconcile these objects too)
and a database of its own. The pool's Pod is a kwok Pod; an Ollama stand-in listens on its IP,
as the container would.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
import redis
import yaml
from chart_helpers import CHART, ROOT, panel_queries
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tollgate_dev.controlplane.cluster import FakeNode, LocalCluster
from tollgate_dev.plugins.cluster import ClusterHandle
from tollgate_dev.proc import free_port, stop_process, wait_http
from tollgate_dev.servers.backing import LocalPostgres, LocalValkey
from tollgate_dev.servers.programs import StandinProcess
from tollgate_dev.servers.prometheus import PrometheusServer
from tollgate_gateway.cli import migrate
from tollgate_gateway.config import Settings

pytestmark = pytest.mark.cluster

T = TypeVar("T")
JOB = "tollgate-operator"
NS = "dashboards"
SYSTEM = "tollgate-system"  # where the chart would be installed: the operator's Lease
GROUP, VERSION = "tollgate.dev", "v1alpha1"
STORAGE_CLASS = "dashboard-test"
VARIABLES = {"$namespace": "", "$job": JOB, "$__rate_interval": "5m", "$__range": "15m"}


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 90) -> T:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except (ApiException, httpx.HTTPError) as exc:
            last, result = exc, None
        if result:
            return result
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last})")


@pytest.fixture(scope="module")
def cluster(service_dir: Path) -> Iterator[LocalCluster]:
    local = LocalCluster(
        service_dir / "dashboard-cluster",
        nodes=[FakeNode("dashboard-gpu-0", gpus=4)],
        pod_cidr="127.93.0.0/16",
        die_with_parent=True,
    )
    try:
        local.start()
    except Exception as exc:
        local.stop()
        pytest.fail(f"the operator's control plane did not start: {exc}", pytrace=False)
    yield local
    local.stop(remove_state=True)


@pytest.fixture(scope="module")
def api(cluster: LocalCluster) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield api_client
    api_client.close()


@pytest.fixture(scope="module")
def dsn(postgres: LocalPostgres) -> Iterator[str]:
    name = f"dashboards_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = postgres.dsn.rsplit("/", 1)[0] + "/" + name
    migrate(Settings(postgres_dsn=url))
    yield url
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def operator_kubeconfig(cluster: LocalCluster, kubectl: str, folder: Path) -> Path:
    """The chart's operator ServiceAccount and RBAC, and a kubeconfig with its token: the
    operator below works with exactly the permissions the chart grants."""
    rendered = subprocess.run(
        [str(cluster.bin_dir / "helm"), "template", "tollgate", str(CHART), "-n", SYSTEM,
         "--show-only", "templates/operator/serviceaccount.yaml",
         "--show-only", "templates/operator/rbac.yaml"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    subprocess.run(
        [kubectl, f"--kubeconfig={cluster.kubeconfig}", "apply", "-f", "-"],
        input=rendered, check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    token = subprocess.run(
        [kubectl, f"--kubeconfig={cluster.kubeconfig}", "-n", SYSTEM, "create", "token",
         "tollgate-operator", "--duration=2h"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    config_file = folder / "operator.kubeconfig"
    config_file.write_text(yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {
            "cluster": admin["clusters"][0]["name"], "user": "operator"}}],
        "current-context": "operator",
    }))  # fmt: skip
    return config_file


@pytest.fixture(scope="module")
def operator(
    cluster: LocalCluster,
    api: client.ApiClient,
    dsn: str,
    service_dir: Path,
    valkey: LocalValkey,
) -> Iterator[str]:
    """The operator process; yields its metrics address (host:port)."""
    kubectl = str(cluster.bin_dir / "kubectl")
    subprocess.run(
        [kubectl, f"--kubeconfig={cluster.kubeconfig}", "apply", "--server-side",
         "-f", str(ROOT / "crds")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    ClusterHandle(cluster.kubeconfig, cluster.bin_dir, None, cluster).wait_established(
        "crd/apikeys.tollgate.dev", "crd/modelaliases.tollgate.dev", "crd/ollamapools.tollgate.dev"
    )
    core = client.CoreV1Api(api)
    for namespace in (NS, SYSTEM):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    kubeconfig = operator_kubeconfig(cluster, kubectl, service_dir)
    metrics_port, liveness_port = free_port(), free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "POSTGRES_DSN": dsn,
        "TOLLGATE_KEY_PEPPER": "dashboard-pepper",
        "TOLLGATE_GATEWAY_URL": "http://gateway.example:8000",
        "TOLLGATE_BACKEND_URL_TEMPLATE": "http://{cluster_ip}:{port}",
        "TOLLGATE_APIKEY_RESYNC_SECONDS": "2",
        "TOLLGATE_POOL_RESYNC_SECONDS": "2",
        "TOLLGATE_ALIAS_RESYNC_SECONDS": "2",
        "TOLLGATE_LEASE_NAMESPACE": SYSTEM,
        "TOLLGATE_LEASE_NAME": "tollgate-operator",
        "TOLLGATE_IDENTITY": "dashboard-operator",
        "TOLLGATE_METRICS_HOST": "127.0.0.1",
        "TOLLGATE_METRICS_PORT": str(metrics_port),
        "TOLLGATE_LIVENESS_ENDPOINT": f"http://127.0.0.1:{liveness_port}/healthz",
        # The gateways' demand per pool (autoscaling), as a gateway writes it.
        "TOLLGATE_REDIS_URL": valkey.url,
        "TOLLGATE_AUTOSCALE_INTERVAL_SECONDS": "0.5",
    }
    with (service_dir / "dashboard-operator.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tollgate_operator", "--all-namespaces"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{liveness_port}/healthz", 60, proc)
        wait_for(
            "the operator to lead",
            lambda: "standby" not in httpx.get(
                f"http://127.0.0.1:{liveness_port}/healthz", timeout=2).text,
        )  # fmt: skip
        yield f"127.0.0.1:{metrics_port}"
    finally:
        stop_process(proc)


def create(api: client.ApiClient, plural: str, name: str, spec: dict[str, Any]) -> None:
    kind = {"apikeys": "ApiKey", "modelaliases": "ModelAlias", "ollamapools": "OllamaPool"}
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, NS, plural,
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind[plural],
         "metadata": {"name": name}, "spec": spec},
    )  # fmt: skip


@pytest.fixture(scope="module")
def prometheus(
    operator: str, api: client.ApiClient, service_dir: Path, valkey: LocalValkey
) -> Iterator[PrometheusServer]:
    server = PrometheusServer(service_dir / "prometheus-operator-dashboard", {JOB: [operator]})
    server.start()
    core = client.CoreV1Api(api)
    standins: list[StandinProcess] = []
    try:
        server.wait_until(f'up{{job="{JOB}"}} == 1', timeout=60)
        # A key: minted; then its Secret is changed by hand and put back (a drift repair).
        create(api, "apikeys", "dashboard-key", {"owner": "dashboards"})
        secret = wait_for("the key's Secret", lambda: core.read_namespaced_secret(
            "dashboard-key-api-key", NS))  # fmt: skip
        original = secret.data["OPENAI_BASE_URL"]
        core.patch_namespaced_secret(
            "dashboard-key-api-key", NS, {"stringData": {"OPENAI_BASE_URL": "http://elsewhere"}}
        )
        wait_for("the Secret to be repaired", lambda: core.read_namespaced_secret(
            "dashboard-key-api-key", NS).data["OPENAI_BASE_URL"] == original)  # fmt: skip
        # An alias on a pool that does not exist: reconcile errors.
        create(
            api,
            "modelaliases",
            "orphan",
            {"alias": "orphan", "model": "llama3:8b", "poolRef": {"name": "missing"}},
        )
        # A pool with one replica (volume provided by hand) and a model pulled onto it.
        core.create_persistent_volume(
            client.V1PersistentVolume(
                metadata=client.V1ObjectMeta(name="dashboard-models"),
                spec=client.V1PersistentVolumeSpec(
                    capacity={"storage": "1Gi"},
                    access_modes=["ReadWriteOnce"],
                    storage_class_name=STORAGE_CLASS,
                    host_path=client.V1HostPathVolumeSource(path="/tmp/dashboard-models"),
                ),
            )
        )
        create(
            api,
            "ollamapools",
            "gpus",
            {
                "replicas": 1,
                "gpus": 1,
                "storage": {"size": "1Gi", "storageClassName": STORAGE_CLASS},
            },
        )
        pod = wait_for("the pool's pod to run", lambda: next((
            p for p in core.list_namespaced_pod(NS, label_selector="tollgate.dev/pool=gpus").items
            if p.status.phase == "Running" and p.status.pod_ip), None))  # fmt: skip
        standin = StandinProcess(host=pod.status.pod_ip, port=11434, models="llama3:8b",
                                 extra=["--pull-delay-ms", "1500"],
                                 log_path=service_dir / "dashboard-standin.log")  # fmt: skip
        standin.start()
        standins.append(standin)
        create(
            api,
            "modelaliases",
            "qwen",
            {"alias": "qwen", "model": "qwen2.5:0.5b", "poolRef": {"name": "gpus"}},
        )
        # An autoscaled pool at zero and a request waiting for it (the demand a gateway
        # publishes, in its format): a scale-up.
        create(
            api,
            "ollamapools",
            "elastic",
            {
                "gpus": 1,
                "storage": {"size": "1Gi", "storageClassName": STORAGE_CLASS},
                "autoscaling": {"minReplicas": 0, "maxReplicas": 1},
            },
        )
        demand = redis.Redis.from_url(valkey.url)
        entry = {"inflight": 0, "queued": 1, "at": time.time()}
        demand.hset(f"tg:demand:{{{NS}/elastic}}", "dashboard-gateway", json.dumps(entry))
        demand.close()
        for metric in (
            'tollgate_operator_scale_events_total{direction="up"}',
            'tollgate_operator_pool_demand{pool="dashboards/elastic"}',
            'tollgate_operator_pulls_total{result="success"}',
            'tollgate_operator_drift_repairs_total{what="secret"}',
            'tollgate_operator_errors_total{kind="ModelAlias"}',
            "tollgate_operator_keys_minted_total",
        ):
            assert server.wait_until(metric, timeout=90), f"the operator never reported {metric}"
        server.wait_for_scrape(JOB, time.time() + 2)  # a few more scrapes
        yield server
    finally:
        for standin in standins:
            standin.stop()
        server.stop()
        with contextlib.suppress(ApiException):
            core.delete_persistent_volume("dashboard-models")


@pytest.mark.parametrize(
    ("title", "expr"),
    [pytest.param(t, e, id=t) for t, e in panel_queries("tollgate-operator")],
)
def test_every_operator_panel_returns_data(
    prometheus: PrometheusServer, title: str, expr: str
) -> None:
    query = expr
    for name in sorted(VARIABLES, key=len, reverse=True):
        query = query.replace(name, VARIABLES[name])
    assert "$" not in query
    result = prometheus.query(query)
    assert result, f"{title}: no series for {query}"
    assert any(not math.isnan(float(r["value"][1])) for r in result), f"{title}: only NaN"
