"""The local control plane is a real Kubernetes: what the operator's tests rely on.

Each test talks to the API server started by the ``k8s_cluster`` fixture
(etcd + kube-apiserver + controller-manager + scheduler + kwok) and waits for
outcomes with deadlines; nothing here is timed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tollgate_dev.controlplane.binaries import Versions
from tollgate_dev.plugins.cluster import ClusterHandle

pytestmark = pytest.mark.cluster

T = TypeVar("T")
GPU = "nvidia.com/gpu"


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Poll ``probe`` until it returns something other than None (or fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except ApiException as exc:  # not there yet, conflict, …
            last_error = exc
            result = None
        if result is not None:
            return result
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})")


@pytest.fixture
def api(k8s_cluster: ClusterHandle) -> Iterator[client.ApiClient]:
    api_client = k8s_cluster.api_client()
    yield api_client
    api_client.close()


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(api)
    name = f"test-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def test_version_is_the_pinned_one(api: client.ApiClient) -> None:
    info = client.VersionApi(api).get_code()
    assert info.git_version == Versions.load().kubernetes


def test_kubectl_sees_the_fake_gpu_node(k8s_cluster: ClusterHandle) -> None:
    out = k8s_cluster.kubectl("get", "nodes", "-o", "name").stdout.split()
    assert "node/tollgate-gpu-0" in out


CRD_GROUP = "tests.tollgate.dev"
CRD_PLURAL = "widgets"


def widget_crd() -> dict[str, Any]:
    spec_schema = {
        "type": "object",
        "required": ["replicas"],
        "properties": {
            "replicas": {"type": "integer", "minimum": 0},
            "maxReplicas": {"type": "integer", "minimum": 0},
        },
        "x-kubernetes-validations": [
            {
                "rule": "!has(self.maxReplicas) || self.replicas <= self.maxReplicas",
                "message": "replicas must not exceed maxReplicas",
            }
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{CRD_PLURAL}.{CRD_GROUP}"},
        "spec": {
            "group": CRD_GROUP,
            "scope": "Namespaced",
            "names": {"plural": CRD_PLURAL, "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": spec_schema},
                        }
                    },
                }
            ],
        },
    }


def widget(name: str, **spec: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{CRD_GROUP}/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_crd_cel_rule_rejects_invalid_objects(api: client.ApiClient, namespace: str) -> None:
    extensions = client.ApiextensionsV1Api(api)
    crd_name = f"{CRD_PLURAL}.{CRD_GROUP}"
    extensions.create_custom_resource_definition(widget_crd())
    try:

        def established() -> bool | None:
            crd = extensions.read_custom_resource_definition(crd_name)
            conditions = crd.status.conditions or []
            ok = any(c.type == "Established" and c.status == "True" for c in conditions)
            return True if ok else None

        wait_for("the CRD to be established", established)
        objects = client.CustomObjectsApi(api)

        def create(body: dict[str, Any]) -> Any:
            return objects.create_namespaced_custom_object(
                CRD_GROUP, "v1", namespace, CRD_PLURAL, body
            )

        # Served as soon as discovery catches up; retry 404s until then.
        valid = widget("ok", replicas=2, maxReplicas=3)
        created = wait_for("the Widget API", lambda: create(valid))
        assert created["spec"] == {"replicas": 2, "maxReplicas": 3}

        with pytest.raises(ApiException) as rejected:
            create(widget("too-many", replicas=5, maxReplicas=3))
        assert rejected.value.status == 422
        assert "replicas must not exceed maxReplicas" in str(rejected.value.body)

        # Plain OpenAPI validation is enforced too.
        with pytest.raises(ApiException) as negative:
            create(widget("negative", replicas=-1))
        assert negative.value.status == 422
    finally:
        extensions.delete_custom_resource_definition(crd_name)


def test_owner_deletion_garbage_collects_children(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    reference = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="child", owner_references=[reference]),
            data={"k": "v"},
        ),
    )
    core.delete_namespaced_config_map("owner", namespace)

    def child_gone() -> bool | None:
        try:
            core.read_namespaced_config_map("child", namespace)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return None

    wait_for("the garbage collector to delete the child", child_gone)


def gpu_statefulset(name: str) -> client.V1StatefulSet:
    labels = {"app": name}
    container = client.V1Container(
        name="model",
        image="tollgate.invalid/never-pulled:0",  # kwok runs no containers
        resources=client.V1ResourceRequirements(
            requests={GPU: "1", "cpu": "100m", "memory": "64Mi"},
            limits={GPU: "1"},
        ),
    )
    return client.V1StatefulSet(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1StatefulSetSpec(
            replicas=1,
            service_name=name,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[container]),
            ),
        ),
    )


async def serve_on(ip: str) -> tuple[web.AppRunner, int]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello from {request.host}")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host=ip, port=0)
    await site.start()
    port: int = runner.addresses[0][1]
    return runner, port


async def test_gpu_statefulset_pod_runs_and_is_reachable_on_its_ip(
    k8s_cluster: ClusterHandle, api: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    apps.create_namespaced_stateful_set(namespace, gpu_statefulset("llm"))

    def running_pod() -> client.V1Pod | None:
        pod = core.read_namespaced_pod("llm-0", namespace)
        if pod.status.phase == "Running" and pod.status.pod_ip:
            return pod
        return None

    pod = await asyncio.to_thread(wait_for, "pod llm-0 to be scheduled and Running", running_pod)
    node = core.read_node(pod.spec.node_name)
    assert int(node.status.capacity[GPU]) >= 1
    assert pod.spec.containers[0].resources.limits[GPU] == "1"

    ip = ipaddress.ip_address(pod.status.pod_ip)
    assert ip.is_loopback
    if k8s_cluster.pod_cidr is not None:
        assert ip in ipaddress.ip_network(k8s_cluster.pod_cidr)

    # A real process listening on the Pod's IP stands in for the model server.
    runner, port = await serve_on(str(ip))
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"http://{ip}:{port}/") as response,
        ):
            assert response.status == 200
            assert await response.text() == f"hello from {ip}:{port}"
    finally:
        await runner.cleanup()

    # Deleting the StatefulSet garbage-collects its Pod (kwok finishes the deletion).
    apps.delete_namespaced_stateful_set("llm", namespace)

    def pod_gone() -> bool | None:
        pods = core.list_namespaced_pod(namespace, label_selector="app=llm").items
        return True if not pods else None

    await asyncio.to_thread(wait_for, "the StatefulSet's pod to be deleted", pod_gone)


def test_gpu_requests_beyond_node_capacity_stay_pending(
    api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    greedy = client.V1Pod(
        metadata=client.V1ObjectMeta(name="greedy"),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="model",
                    image="tollgate.invalid/never-pulled:0",
                    resources=client.V1ResourceRequirements(limits={GPU: "64"}),
                )
            ]
        ),
    )
    core.create_namespaced_pod(namespace, greedy)

    def unschedulable() -> bool | None:
        pod = core.read_namespaced_pod("greedy", namespace)
        for condition in pod.status.conditions or []:
            if condition.type == "PodScheduled" and condition.reason == "Unschedulable":
                assert GPU in (condition.message or "")
                return True
        return None

    wait_for("the scheduler to report the pod unschedulable", unschedulable)
    assert core.read_namespaced_pod("greedy", namespace).spec.node_name is None
