"""Tenant isolation of pools on the local control plane: each pool's NetworkPolicy, read back
from the API server, selects exactly its Pods and admits only the gateway's and the
operator's (evaluated over the objects: this cluster has no CNI to enforce it); pool Pods
carry no API token; specs the platform does not allow are refused with a condition."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from operator_harness import OLLAMA_PORT, FakeCluster, Kube, OperatorProcess, wait_for

from tollgate_dev.controlplane.netpol import PodRef, ingress_allowed, selects

pytestmark = pytest.mark.cluster

# The operator's defaults (its settings), with no POD_NAMESPACE: the "default" namespace.
GATEWAY = PodRef(
    "default", {"app.kubernetes.io/part-of": "tollgate", "app.kubernetes.io/component": "gateway"}
)
OPERATOR = PodRef(
    "default",
    {"app.kubernetes.io/part-of": "tollgate", "app.kubernetes.io/component": "operator"},
)


@pytest.fixture(autouse=True)
def _operator(operator: OperatorProcess, fake_cluster: FakeCluster) -> None:
    """Every test here needs the operator and the fake runtime."""


def pool(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "OllamaPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": 1, "gpus": 1, "storage": {"size": "1Gi"}, **spec},
    }


def pods(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    items = kube.core.list_namespaced_pod(namespace).items
    return [kube.api.sanitize_for_serialization(p) for p in items]


def policies(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    items = client.NetworkingV1Api(kube.api).list_namespaced_network_policy(namespace).items
    return [kube.api.sanitize_for_serialization(p) for p in items]


def test_pool_network_policy_and_pods_without_a_token(kube: Kube, namespace: str) -> None:
    kube.create(pool(namespace, "a"))
    kube.create(pool(namespace, "b"))
    for name in ("a", "b"):
        wait_for(f"pool {name} to be Ready", lambda n=name: kube.ready("ollamapools", namespace, n))
    # A tenant's own Pod next to the pools, wearing the gateway's labels.
    wait_for(
        "the namespace's default ServiceAccount",
        lambda: kube.core.read_namespaced_service_account("default", namespace),
    )
    kube.core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="tenant", labels=dict(GATEWAY.labels)),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
        ),
    )
    by_pool: dict[str, list[dict[str, Any]]] = {}
    for pod in pods(kube, namespace):
        by_pool.setdefault(pod["metadata"]["labels"].get("tollgate.dev/pool", ""), []).append(pod)
    assert len(by_pool["a"]) == 1 and len(by_pool["b"]) == 1 and len(by_pool[""]) == 1

    found = {p["metadata"]["name"]: p for p in policies(kube, namespace)}
    assert set(found) == {"a", "b"}
    policy = found["a"]
    # It selects exactly pool a's Pods among every Pod of the namespace.
    selected = {
        p["metadata"]["name"] for p in pods(kube, namespace) if selects(policy, PodRef.of(p))
    }
    assert selected == {p["metadata"]["name"] for p in by_pool["a"]}
    # It admits the gateway's and the operator's Pods on the Ollama port, and nobody else.
    target = PodRef.of(by_pool["a"][0])
    everything = list(found.values())
    assert ingress_allowed(everything, GATEWAY, target, OLLAMA_PORT)
    assert ingress_allowed(everything, OPERATOR, target, OLLAMA_PORT)
    assert not ingress_allowed(everything, GATEWAY, target, 22)
    for other in (by_pool[""][0], by_pool["b"][0]):
        assert not ingress_allowed(everything, PodRef.of(other), target, OLLAMA_PORT)
    owner = policy["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("OllamaPool", "a")

    # The Pod as the API server stored it (after the ServiceAccount admission plugin): its
    # own account, and no token volume or mount.
    pod = by_pool["a"][0]
    assert pod["spec"]["serviceAccountName"] == "a-ollama"
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert not [v for v in pod["spec"].get("volumes", []) if "projected" in v]
    for container in pod["spec"]["containers"]:
        mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
        assert not [m for m in mounts if "serviceaccount" in m]
    account = kube.core.read_namespaced_service_account("a-ollama", namespace)
    assert account.automount_service_account_token is False
    bindings = client.RbacAuthorizationV1Api(kube.api).list_namespaced_role_binding(namespace)
    assert not bindings.items  # bound to nothing


def refused(kube: Kube, namespace: str, name: str, reason: str) -> dict[str, Any]:
    cond = wait_for(
        f"pool {name} to be refused with {reason}",
        lambda: (
            (c := kube.condition(kube.get("ollamapools", namespace, name), "Ready"))
            and c["reason"] == reason
            and c
        ),
    )
    assert cond["status"] == "False"
    return cond


def test_disallowed_image_and_secret_env_are_refused(kube: Kube, namespace: str) -> None:
    kube.create(pool(namespace, "evil", image="evil.example/ollama/ollama:1"))
    kube.create(
        pool(
            namespace,
            "peek",
            env=[{"name": "DB", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
        )
    )
    cond = refused(kube, namespace, "evil", "ImageNotAllowed")
    assert "evil.example/ollama/ollama:1" in cond["message"]
    assert "docker.io/ollama/ollama" in cond["message"]
    cond = refused(kube, namespace, "peek", "EnvFromSecretNotAllowed")
    assert "DB" in cond["message"]
    # Nothing was made for them.
    apps = client.AppsV1Api(kube.api)
    assert not apps.list_namespaced_stateful_set(namespace).items
    assert not pods(kube, namespace)
    wanted = {("evil", "ImageNotAllowed"), ("peek", "EnvFromSecretNotAllowed")}
    wait_for(
        "a Warning Event for each",
        lambda: (
            wanted
            <= {
                (e.involved_object.name, e.reason)
                for e in kube.core.list_namespaced_event(namespace).items
                if e.type == "Warning"
            }
        ),
    )

    # An allowed image is fine, and fixing the refused spec is enough.
    kube.patch("ollamapools", namespace, "evil", {"image": "ollama/ollama:0.33.0"})
    wait_for(
        "pool evil to be Ready once fixed", lambda: kube.ready("ollamapools", namespace, "evil")
    )
    sts = apps.read_namespaced_stateful_set("evil", namespace)
    assert sts.spec.template.spec.containers[0].image == "ollama/ollama:0.33.0"
