"""The chart in a real API server (the local control plane, kwok nodes): install, upgrade,
uninstall, and the migration hook's ordering and failure.

kwok runs no containers: Pods are scheduled and marked Running, and Pods owned by a Job are
marked Succeeded right after (kwok's pod-complete stage). So a hook Job "succeeds" at once,
which shows the ordering of a good install. For a failing migration the hook Pod is kept off
the fake node (a nodeSelector nothing matches) so kwok leaves it alone, and the test fails it
through the Pod status subresource, as a kubelet would report a non-zero exit: Helm must then
fail, leave the Job visible, and create nothing else.
"""

from __future__ import annotations

import base64
import contextlib
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from chart_helpers import CHART, ROOT
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tollgate_dev.plugins.cluster import ClusterHandle

pytestmark = pytest.mark.cluster

T = TypeVar("T")
CI = CHART / "ci"
STORAGE_CLASS = "tollgate-chart-test"
SECRET_DATA = {
    "POSTGRES_DSN": "postgresql://tollgate:password@db.example:5432/tollgate",
    "REDIS_URL": "redis://redis.example:6379/0",
    "JWT_SECRET": "x" * 40,
    "TOLLGATE_KEY_PEPPER": "pepper-" + "p" * 16,
}


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except ApiException as exc:
            last, result = exc, None
        if result:
            return result
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last})")


def when(stamp: datetime | str) -> float:
    if isinstance(stamp, str):
        stamp = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return stamp.timestamp()


class Helm:
    def __init__(self, cluster: ClusterHandle) -> None:
        self.binary = str(cluster.bin_dir / "helm")
        self.kubeconfig = str(cluster.kubeconfig)

    def args(self, *args: str) -> list[str]:
        return [self.binary, "--kubeconfig", self.kubeconfig, *args]

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.args(*args), capture_output=True, text=True, timeout=300, check=False
        )
        if check and result.returncode != 0:
            pytest.fail(f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}", pytrace=False)
        return result


@pytest.fixture(scope="module")
def helm(k8s_cluster: ClusterHandle) -> Helm:
    return Helm(k8s_cluster)


@pytest.fixture(scope="module")
def api(k8s_cluster: ClusterHandle) -> Iterator[client.ApiClient]:
    api_client = k8s_cluster.api_client()
    yield api_client
    api_client.close()


@pytest.fixture(scope="module")
def monitoring_crds(k8s_cluster: ClusterHandle) -> None:
    """ServiceMonitor and PrometheusRule, from the prometheus-operator module."""
    folder = subprocess.run(
        [str(ROOT / "hack" / "chart" / "prometheus-crds.sh")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.strip()
    k8s_cluster.kubectl("apply", "--server-side", "-f", folder)
    k8s_cluster.wait_established(
        "crd/servicemonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com"
    )


@pytest.fixture
def namespace(api: client.ApiClient, helm: Helm) -> Iterator[str]:
    core = client.CoreV1Api(api)
    name = f"chart-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # The default ServiceAccount appears shortly after the namespace (the chart looks it up).
    wait_for(
        "the default ServiceAccount", lambda: core.read_namespaced_service_account("default", name)
    )
    yield name
    for release in helm("list", "-n", name, "-q", check=False).stdout.split():
        helm("uninstall", release, "-n", name, "--wait", "--timeout", "60s", check=False)
    rbac = client.RbacAuthorizationV1Api(api)
    for kind in ("cluster_role", "cluster_role_binding"):
        for item in getattr(rbac, f"list_{kind}")(
            label_selector="app.kubernetes.io/name=tollgate"
        ).items:
            if item.metadata.name.startswith(f"{name}-"):
                with contextlib.suppress(ApiException):
                    getattr(rbac, f"delete_{kind}")(item.metadata.name)
    with contextlib.suppress(ApiException):
        core.delete_namespace(name)


def create_secret(api: client.ApiClient, namespace: str, name: str) -> None:
    client.CoreV1Api(api).create_namespaced_secret(
        namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data=SECRET_DATA),
    )


@contextlib.contextmanager
def persistent_volume(api: client.ApiClient, size: str = "2Gi") -> Iterator[str]:
    """What a storage provisioner would do: one volume for the bundled Postgres claim."""
    core = client.CoreV1Api(api)
    name = f"chart-pv-{uuid.uuid4().hex[:8]}"
    core.create_persistent_volume(
        client.V1PersistentVolume(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PersistentVolumeSpec(
                capacity={"storage": size},
                access_modes=["ReadWriteOnce"],
                storage_class_name=STORAGE_CLASS,
                persistent_volume_reclaim_policy="Retain",
                host_path=client.V1HostPathVolumeSource(path=f"/tmp/{name}"),
            ),
        )
    )
    try:
        yield name
    finally:
        with contextlib.suppress(ApiException):
            core.delete_persistent_volume(name)


def release_objects(helm: Helm, release: str, namespace: str) -> list[dict[str, Any]]:
    manifest = helm("get", "manifest", release, "-n", namespace).stdout
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def assert_all_exist(k8s_cluster: ClusterHandle, objects: list[dict[str, Any]], ns: str) -> None:
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        args = [
            "get",
            f"{kind}.{obj['apiVersion'].split('/')[0]}" if "/" in obj["apiVersion"] else kind,
            name,
            "-o",
            "name",
        ]
        if obj["metadata"].get("namespace"):
            args += ["-n", ns]
        result = k8s_cluster.kubectl(*args, check=False)
        assert result.returncode == 0, f"{kind}/{name} is missing: {result.stderr}"


def running_pods(api: client.ApiClient, namespace: str, component: str) -> list[client.V1Pod]:
    pods = (
        client.CoreV1Api(api)
        .list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/component={component}")
        .items
    )
    return [p for p in pods if p.status.phase == "Running" and p.spec.node_name]


def secret_data(api: client.ApiClient, namespace: str, name: str) -> dict[str, str]:
    secret = client.CoreV1Api(api).read_namespaced_secret(name, namespace)
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


# --- tests ------------------------------------------------------------------------------


def test_evaluation_install_upgrade_uninstall_reinstall(
    k8s_cluster: ClusterHandle,
    api: client.ApiClient,
    helm: Helm,
    monitoring_crds: None,
    namespace: str,
) -> None:
    """Bundled databases, generated secrets, a pool and aliases, monitoring, ingress, network
    policies: every object accepted, pods running; upgrades keep the generated secrets; the
    uninstall keeps the CRDs, the Postgres volume and the Secret; a reinstall adopts them."""
    values = [
        "-f", str(CI / "bundled-db-default-pool.yaml"),
        "-f", str(CI / "monitoring-on.yaml"),
        "-f", str(CI / "ingress-tls.yaml"),
        "--set", "networkPolicy.enabled=true",
        "--set", f"postgresql.persistence.storageClass={STORAGE_CLASS}",
    ]  # fmt: skip
    with persistent_volume(api):
        helm("install", "tollgate", str(CHART), "-n", namespace, *values,
             "--wait", "--timeout", "3m")  # fmt: skip
        objects = release_objects(helm, "tollgate", namespace)
        kinds = {o["kind"] for o in objects}
        assert kinds >= {
            "Deployment", "StatefulSet", "Service", "Secret", "ServiceAccount", "ClusterRole",
            "Role", "PodDisruptionBudget", "NetworkPolicy", "Ingress", "ServiceMonitor",
            "PrometheusRule", "ConfigMap", "OllamaPool", "ModelAlias",
        }  # fmt: skip
        assert_all_exist(k8s_cluster, objects, namespace)
        for component in ("gateway", "operator", "postgresql", "redis"):
            assert running_pods(api, namespace, component), f"no running {component} pod"

        # The first install migrates after the bundled Postgres exists (post-install hook).
        batch = client.BatchV1Api(api)
        job = batch.read_namespaced_job("tollgate-migrate", namespace)
        assert job.status.succeeded == 1
        gateway = client.AppsV1Api(api).read_namespaced_deployment("tollgate-gateway", namespace)
        assert when(job.metadata.creation_timestamp) >= when(gateway.metadata.creation_timestamp)
        generated = secret_data(api, namespace, "tollgate-secrets")
        assert len(generated["JWT_SECRET"]) == 48
        assert len(generated["TOLLGATE_KEY_PEPPER"]) == 32  # required: always generated

        # Upgrade: the migration runs again, before the new pods; generated secrets stay.
        helm("upgrade", "tollgate", str(CHART), "-n", namespace, *values,
             "--set", "gateway.logLevel=debug", "--wait", "--timeout", "3m")  # fmt: skip
        job = batch.read_namespaced_job("tollgate-migrate", namespace)
        assert job.status.succeeded == 1
        newest = max(
            client.AppsV1Api(api)
            .list_namespaced_replica_set(
                namespace, label_selector="app.kubernetes.io/component=gateway"
            )
            .items,
            key=lambda rs: when(rs.metadata.creation_timestamp),
        )
        assert when(job.status.completion_time) <= when(newest.metadata.creation_timestamp)
        assert secret_data(api, namespace, "tollgate-secrets") == generated

        uninstall = helm("uninstall", "tollgate", "-n", namespace, "--wait", "--timeout", "2m")
        assert "tollgate-secrets" in uninstall.stdout  # "kept due to the resource policy"
        # The chart's own pool and aliases stay too (as the README says): the operator leaves
        # in the same uninstall and could not finalize their deletion.
        custom = client.CustomObjectsApi(api)
        for plural, name in (("ollamapools", "default"), ("modelaliases", "llama3-8b"),
                             ("modelaliases", "gpt-4o-mini")):  # fmt: skip
            assert name in uninstall.stdout
            kept = custom.get_namespaced_custom_object(
                "tollgate.dev", "v1alpha1", namespace, plural, name
            )
            assert not kept["metadata"].get("deletionTimestamp"), (plural, name)
        core = client.CoreV1Api(api)
        assert (
            core.read_namespaced_persistent_volume_claim(
                "data-tollgate-postgresql-0", namespace
            ).status.phase
            == "Bound"
        )
        assert secret_data(api, namespace, "tollgate-secrets") == generated
        ext = client.ApiextensionsV1Api(api)
        for crd in ("apikeys", "modelaliases", "ollamapools"):
            ext.read_custom_resource_definition(f"{crd}.tollgate.dev")
        apps = client.AppsV1Api(api)
        wait_for("the release's workloads to go", lambda: not (
            apps.list_namespaced_deployment(namespace).items
            or apps.list_namespaced_stateful_set(namespace).items) or None)  # fmt: skip
        # The last migration Job is a hook: Helm leaves it (and its logs) behind.
        assert batch.read_namespaced_job("tollgate-migrate", namespace).status.succeeded == 1

        # A reinstall takes the kept Secret back: the same passwords as the kept data.
        helm("install", "tollgate", str(CHART), "-n", namespace, *values,
             "--wait", "--timeout", "3m")  # fmt: skip
        assert secret_data(api, namespace, "tollgate-secrets") == generated
        helm("uninstall", "tollgate", "-n", namespace, "--wait", "--timeout", "2m")
        core.delete_namespaced_persistent_volume_claim("data-tollgate-postgresql-0", namespace)


@pytest.fixture
def priority_class(api: client.ApiClient) -> Iterator[str]:
    """The PriorityClass the production scenario names."""
    scheduling = client.SchedulingV1Api(api)
    name = "high-priority"
    created = False
    with contextlib.suppress(ApiException):  # 409: there already
        scheduling.create_priority_class(
            client.V1PriorityClass(metadata=client.V1ObjectMeta(name=name), value=1000)
        )
        created = True
    yield name
    if created:
        with contextlib.suppress(ApiException):
            scheduling.delete_priority_class(name)


def test_production_install_migrates_before_anything_starts(
    k8s_cluster: ClusterHandle,
    api: client.ApiClient,
    helm: Helm,
    monitoring_crds: None,
    priority_class: str,
    namespace: str,
) -> None:
    create_secret(api, namespace, "tollgate-production")
    helm("install", "tollgate", str(CHART), "-n", namespace,
         "-f", str(CI / "production-external-db.yaml"), "-f", str(CI / "monitoring-on.yaml"),
         "--wait", "--timeout", "3m")  # fmt: skip
    objects = release_objects(helm, "tollgate", namespace)
    assert {"HorizontalPodAutoscaler", "NetworkPolicy", "PodDisruptionBudget"} <= {
        o["kind"] for o in objects
    }
    assert not [o for o in objects if o["kind"] == "Secret"]
    assert_all_exist(k8s_cluster, objects, namespace)
    # The Deployment leaves replicas to the autoscaler, which brings it to its minimum.
    wait_for("3 gateway pods", lambda: len(running_pods(api, namespace, "gateway")) == 3)
    assert len(running_pods(api, namespace, "operator")) == 2

    job = client.BatchV1Api(api).read_namespaced_job("tollgate-migrate", namespace)
    assert job.metadata.annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job.status.succeeded == 1
    apps = client.AppsV1Api(api)
    for name in ("tollgate-gateway", "tollgate-operator"):
        deployment = apps.read_namespaced_deployment(name, namespace)
        # Helm created the workloads only once the migration had succeeded.
        assert when(job.status.completion_time) <= when(deployment.metadata.creation_timestamp)
    events = (
        client.CoreV1Api(api)
        .list_namespaced_event(namespace, field_selector="involvedObject.name=tollgate-migrate")
        .items
    )
    assert any(e.reason == "Completed" for e in events)


def test_failed_migration_fails_the_install_and_creates_nothing(
    api: client.ApiClient, helm: Helm, namespace: str, tmp_path: Path
) -> None:
    create_secret(api, namespace, "tollgate-secrets")
    command = helm.args(
        "install", "tollgate", str(CHART), "-n", namespace, "--timeout", "120s",
        "--set-string", "migration.nodeSelector.tollgate\\.dev/nowhere=true",
    )  # fmt: skip
    log = tmp_path / "helm.log"
    with log.open("w") as out:
        install = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True)
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    try:
        failed: set[str] = set()
        for attempt in (1, 2):  # backoffLimit 1: two pods fail, then the Job does

            def next_pod() -> client.V1Pod | None:
                assert install.poll() is None, f"helm ended early:\n{log.read_text()}"
                pods = core.list_namespaced_pod(
                    namespace, label_selector="app.kubernetes.io/component=migration"
                ).items
                return next((p for p in pods if p.metadata.name not in failed), None)

            pod = wait_for(f"migration pod {attempt}", next_pod)
            # While the hook runs, Helm has created nothing else.
            assert not apps.list_namespaced_deployment(namespace).items
            assert not core.list_namespaced_service(namespace).items
            core.patch_namespaced_pod_status(
                pod.metadata.name,
                namespace,
                {"status": {"phase": "Failed", "reason": "Error", "message": "exit code 1"}},
            )
            failed.add(pod.metadata.name)
        install.wait(timeout=120)
    finally:
        if install.poll() is None:
            install.kill()
    output = log.read_text()
    assert install.returncode != 0, output
    assert "pre-install" in output and "BackoffLimitExceeded" in output, output
    job = client.BatchV1Api(api).read_namespaced_job("tollgate-migrate", namespace)
    assert any(c.type == "Failed" and c.status == "True" for c in job.status.conditions)
    assert job.status.failed == 2
    assert not apps.list_namespaced_deployment(namespace).items
    status = helm("status", "tollgate", "-n", namespace, check=False).stdout
    assert "STATUS: failed" in status


@pytest.fixture
def no_monitoring_crds(k8s_cluster: ClusterHandle) -> Iterator[None]:
    """A cluster without the prometheus-operator CRDs (put back afterwards if they were)."""
    crds = [
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
    ]
    there = k8s_cluster.kubectl("get", *crds, check=False).returncode == 0
    k8s_cluster.kubectl("delete", "--ignore-not-found", "--wait", *crds)
    yield
    if there:
        folder = subprocess.run(
            [str(ROOT / "hack" / "chart" / "prometheus-crds.sh")],
            capture_output=True, text=True, check=True, timeout=300,
        ).stdout.strip()  # fmt: skip
        k8s_cluster.kubectl("apply", "--server-side", "-f", folder)
        k8s_cluster.wait_established(*crds)


def test_monitoring_without_the_prometheus_crds_is_refused_plainly(
    no_monitoring_crds: None, api: client.ApiClient, helm: Helm, namespace: str
) -> None:
    secrets = [
        "--set", "secrets.create=true",
        "--set", "secrets.postgresDsn=postgresql://tollgate@postgres.example/tollgate",
        "--set", "secrets.redisUrl=redis://redis.example:6379/0",
    ]  # fmt: skip
    values = [*secrets, "-f", str(CI / "monitoring-on.yaml")]
    result = helm("install", "tollgate", str(CHART), "-n", namespace, *values, check=False)
    assert result.returncode != 0
    assert "metrics.prometheusRule.enabled needs the PrometheusRule CRD" in result.stderr
    assert "no matches for kind" not in result.stderr
    assert not client.AppsV1Api(api).list_namespaced_deployment(namespace).items
    # Without monitoring the same install goes ahead.
    helm("install", "tollgate", str(CHART), "-n", namespace, *secrets)


def test_missing_secret_is_reported_before_anything_is_created(
    api: client.ApiClient, helm: Helm, namespace: str
) -> None:
    result = helm("install", "tollgate", str(CHART), "-n", namespace, check=False)
    assert result.returncode != 0
    assert f"Secret {namespace}/tollgate-secrets does not exist" in result.stderr
    assert "kubectl -n" in result.stderr and "create secret generic" in result.stderr
    assert not client.BatchV1Api(api).list_namespaced_job(namespace).items

    client.CoreV1Api(api).create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="tollgate-secrets"),
            string_data={"POSTGRES_DSN": "postgresql://x@y/z", "REDIS_URL": "redis://r:6379"},
        ),
    )
    result = helm("install", "tollgate", str(CHART), "-n", namespace, check=False)
    assert result.returncode != 0
    assert "has no key JWT_SECRET" in result.stderr

    # The pepper is required too: gateway and operator would refuse to start without it.
    client.CoreV1Api(api).patch_namespaced_secret(
        "tollgate-secrets", namespace, {"stringData": {"JWT_SECRET": "x" * 40}}
    )
    result = helm("install", "tollgate", str(CHART), "-n", namespace, check=False)
    assert result.returncode != 0
    assert "has no key TOLLGATE_KEY_PEPPER" in result.stderr


def test_install_bundle_applies_with_kubectl(
    k8s_cluster: ClusterHandle, api: client.ApiClient
) -> None:
    """manifests/install/tollgate.yaml as documented: the Secret, then `kubectl apply`."""
    core = client.CoreV1Api(api)
    bundle = ROOT / "manifests" / "install" / "tollgate.yaml"
    try:
        k8s_cluster.kubectl("create", "namespace", "tollgate")
        create_secret(api, "tollgate", "tollgate-secrets")
        k8s_cluster.kubectl("apply", "--server-side", "-f", str(bundle))
        for component in ("gateway", "operator"):
            wait_for(f"{component} pods", lambda c=component: running_pods(api, "tollgate", c))
    finally:
        k8s_cluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", str(bundle),
                            check=False)  # fmt: skip
        with contextlib.suppress(ApiException):
            core.delete_namespace("tollgate")
