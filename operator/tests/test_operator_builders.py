"""Builders are pure: manifests from specs, checked without a cluster."""

from __future__ import annotations

import base64
from typing import Any

from tollgate_dev.controlplane.netpol import PodRef, ingress_allowed, selects
from tollgate_operator.builders.labels import POOL_LABEL, pool_selector
from tollgate_operator.builders.pool import (
    DATA_DIR,
    MODELS_DIR,
    Peer,
    PoolDefaults,
    build_network_policy,
    build_pdb,
    build_pool_children,
    build_statefulset,
)
from tollgate_operator.builders.secret import build_key_secret, secret_value
from tollgate_operator.resources import OllamaPoolSpec

DEFAULTS = PoolDefaults(image="registry.example/ollama:1", port=11434, uid=1000)


def env_of(sts: dict[str, Any]) -> dict[str, Any]:
    container = sts["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_statefulset_runs_ollama_on_gpus_with_a_volume_per_replica() -> None:
    spec = OllamaPoolSpec.model_validate(
        {
            "replicas": 3,
            "gpus": 2,
            "storage": {"size": "100Gi", "storageClassName": "fast"},
            "keepAlive": "-1",
            "numParallel": 4,
            "maxQueue": 64,
            "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": 32}},
        }
    )
    sts = build_statefulset("gpu-pool", "ml", spec, DEFAULTS)
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert sts["metadata"] == {
        "name": "gpu-pool",
        "namespace": "ml",
        "labels": sts["spec"]["template"]["metadata"]["labels"],
    }
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == "gpu-pool-headless"
    assert sts["spec"]["selector"]["matchLabels"] == pool_selector("gpu-pool")
    assert container["image"] == "registry.example/ollama:1"
    assert container["resources"] == {
        "requests": {"cpu": "4", "memory": "16Gi"},
        "limits": {"memory": "32", "nvidia.com/gpu": "2"},
    }
    assert env_of(sts) == {
        "OLLAMA_HOST": "0.0.0.0:11434",
        "HOME": DATA_DIR,
        "OLLAMA_MODELS": MODELS_DIR,
        "OLLAMA_KEEP_ALIVE": "-1",
        "OLLAMA_NUM_PARALLEL": "4",
        "OLLAMA_MAX_QUEUE": "64",
    }
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "100Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[DATA_DIR] == claim["metadata"]["name"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/", "port": "http"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/api/version"
    assert container["ports"] == [{"name": "http", "containerPort": 11434, "protocol": "TCP"}]


def test_pod_runs_as_non_root_with_a_read_only_root_filesystem() -> None:
    sts = build_statefulset("p", "ns", OllamaPoolSpec(), DEFAULTS)
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["fsGroup"] == 1000
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["enableServiceLinks"] is False
    # HOME (where Ollama writes its identity key) and the models live on the volume.
    assert env_of(sts)["HOME"] == DATA_DIR
    assert env_of(sts)["OLLAMA_MODELS"].startswith(DATA_DIR + "/")
    assert {v["name"] for v in pod["volumes"]} == {"tmp"}


def test_placement_and_extra_env_are_passed_through() -> None:
    spec = OllamaPoolSpec.model_validate(
        {
            "gpus": 0,
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "affinity": {
                "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}
            },
            "imagePullSecrets": [{"name": "regcred"}],
            "imagePullPolicy": "IfNotPresent",
            "image": "mirror/ollama:2",
            "keepAlive": "10m",
            "env": [
                {"name": "OLLAMA_DEBUG", "value": "1"},
                {"name": "OLLAMA_KEEP_ALIVE", "value": "1h"},
                {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "t"}}},
            ],
        }
    )
    sts = build_statefulset("p", "ns", spec, DEFAULTS)
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert "podAntiAffinity" in pod["affinity"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert container["image"] == "mirror/ollama:2"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    env = env_of(sts)
    assert env["OLLAMA_DEBUG"] == "1"
    assert env["OLLAMA_KEEP_ALIVE"] == "1h"  # the user's env wins over keepAlive
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "t"}}


def test_reserved_env_cannot_be_overridden() -> None:
    spec = OllamaPoolSpec.model_validate({"env": [{"name": "OLLAMA_HOST", "value": "x"}]})
    assert env_of(build_statefulset("p", "ns", spec, DEFAULTS))["OLLAMA_HOST"] == "0.0.0.0:11434"


def test_other_gpu_vendors() -> None:
    spec = OllamaPoolSpec.model_validate({"gpus": 1, "gpuResourceName": "amd.com/gpu"})
    container = build_statefulset("p", "ns", spec, DEFAULTS)["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["resources"]["limits"] == {"amd.com/gpu": "1"}


def test_services_and_pdb() -> None:
    children = build_pool_children("p", "ns", OllamaPoolSpec(), DEFAULTS)
    kinds = [(c["kind"], c["metadata"]["name"]) for c in children]
    assert kinds == [
        ("NetworkPolicy", "p"),
        ("ServiceAccount", "p-ollama"),
        ("Service", "p"),
        ("Service", "p-headless"),
        ("StatefulSet", "p"),
        ("PodDisruptionBudget", "p"),
    ]
    service, headless = children[2], children[3]
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 11434, "targetPort": "http", "protocol": "TCP"}
    ]
    assert "clusterIP" not in service["spec"]
    assert headless["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"][POOL_LABEL] == "p"
    pdb = build_pdb("p", "ns")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": pool_selector("p")}}
    for child in children:
        assert child["metadata"]["namespace"] == "ns"
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "tollgate-operator"


def test_key_secret_is_ready_for_env_from() -> None:
    secret = build_key_secret(
        name="app-api-key",
        namespace="ns",
        apikey="app",
        key="tg-secret",
        key_id="0000",
        rotation_token="r1",
        base_url="http://gw/v1",
    )
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == {
        "api-key": "tg-secret",
        "OPENAI_API_KEY": "tg-secret",
        "OPENAI_BASE_URL": "http://gw/v1",
        "ANTHROPIC_API_KEY": "tg-secret",
        "ANTHROPIC_BASE_URL": "http://gw",
    }
    assert secret["metadata"]["annotations"] == {
        "tollgate.dev/key-id": "0000",
        "tollgate.dev/rotation-token": "r1",
    }
    assert secret_value(secret, "api-key") == "tg-secret"
    assert secret_value(secret, "missing") is None
    assert secret_value({"stringData": {"k": "v"}}, "k") == "v"
    assert secret_value({"data": {"k": "%%%"}}, "k") is None
    assert secret_value(None, "k") is None


# -- isolation: NetworkPolicy and ServiceAccount ---------------------------------------------

GATEWAY_LABELS = {"app.kubernetes.io/name": "tollgate", "app.kubernetes.io/component": "gateway"}
OPERATOR_LABELS = {"app.kubernetes.io/name": "tollgate", "app.kubernetes.io/component": "operator"}
ISOLATED = PoolDefaults(
    image="registry.example/ollama:1",
    ingress_from=(Peer(GATEWAY_LABELS, "tollgate"), Peer(OPERATOR_LABELS, "tollgate")),
)


def pool_pod(pool: str, namespace: str) -> PodRef:
    """A Pod as the StatefulSet's template makes it (plus what the controller adds)."""
    sts = build_statefulset(pool, namespace, OllamaPoolSpec(), ISOLATED)
    labels = {**sts["spec"]["template"]["metadata"]["labels"], "apps.kubernetes.io/pod-index": "0"}
    return PodRef(namespace, labels)


def test_pool_pods_have_their_own_account_and_no_token() -> None:
    children = build_pool_children("p", "ns", OllamaPoolSpec(), ISOLATED)
    account = next(c for c in children if c["kind"] == "ServiceAccount")
    pod = next(c for c in children if c["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is False
    assert account["automountServiceAccountToken"] is False
    assert account["metadata"]["namespace"] == "ns"
    # A pool named "default" leaves the namespace's default ServiceAccount alone.
    default_pool = build_pool_children("default", "ns", OllamaPoolSpec(), ISOLATED)
    names = {c["metadata"]["name"] for c in default_pool if c["kind"] == "ServiceAccount"}
    assert names == {"default-ollama"}
    # Applied before the StatefulSet that names it, the policy before anything runs.
    kinds = [c["kind"] for c in children]
    assert kinds.index("NetworkPolicy") < kinds.index("ServiceAccount") < kinds.index("StatefulSet")


def test_network_policy_admits_only_the_gateway_and_operator_on_the_ollama_port() -> None:
    policy = build_network_policy("p", "team", 11434, ISOLATED.ingress_from or ())
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress open: pulls reach registries
    gateway = PodRef("tollgate", {**GATEWAY_LABELS, "pod-template-hash": "x"})
    operator = PodRef("tollgate", OPERATOR_LABELS)
    target = pool_pod("p", "team")

    assert selects(policy, target)
    assert ingress_allowed([policy], gateway, target, 11434)
    assert ingress_allowed([policy], operator, target, 11434)
    # Not another port, not UDP.
    assert not ingress_allowed([policy], gateway, target, 8080)
    assert not ingress_allowed([policy], gateway, target, 11434, "UDP")
    # Not a tenant's Pod, in the pool's namespace or any other, whatever else it carries.
    tenant = PodRef("team", {"app": "chatbot", "app.kubernetes.io/name": "tollgate"})
    assert not ingress_allowed([policy], tenant, target, 11434)
    # Not the gateway's labels in another namespace (a tenant can put any labels on its Pods).
    impostor = PodRef("team", GATEWAY_LABELS)
    assert not ingress_allowed([policy], impostor, target, 11434)
    # Not another pool's Pods either (they are not the gateway).
    assert not ingress_allowed([policy], pool_pod("q", "team"), target, 11434)


def test_network_policy_selects_exactly_the_pools_pods() -> None:
    policy = build_network_policy("p", "team", 11434, ISOLATED.ingress_from or ())
    assert selects(policy, pool_pod("p", "team"))
    assert not selects(policy, pool_pod("p", "other"))  # a pool of the same name elsewhere
    assert not selects(policy, pool_pod("p-2", "team"))
    assert not selects(policy, pool_pod("q", "team"))
    assert not selects(policy, PodRef("team", {"app": "web"}))
    # Pods it does not select are left alone by it.
    web = PodRef("team", {"app": "web"})
    assert ingress_allowed([policy], PodRef("x", {}), web, 80)


def test_peers_in_any_namespace_and_no_policy() -> None:
    anywhere = PoolDefaults(image="i", ingress_from=(Peer(GATEWAY_LABELS, "*"),))
    (policy,) = [
        c
        for c in build_pool_children("p", "team", OllamaPoolSpec(), anywhere)
        if c["kind"] == "NetworkPolicy"
    ]
    target = pool_pod("p", "team")
    assert ingress_allowed([policy], PodRef("gw-elsewhere", GATEWAY_LABELS), target, 11434)
    assert not ingress_allowed([policy], PodRef("gw-elsewhere", OPERATOR_LABELS), target, 11434)
    # No peers configured: nothing may reach the pool.
    closed = build_network_policy("p", "team", 11434, ())
    assert closed["spec"]["ingress"] == []
    assert not ingress_allowed([closed], PodRef("tollgate", GATEWAY_LABELS), target, 11434)
    # Turned off (the platform isolates pools otherwise): no policy at all.
    off = PoolDefaults(image="i", ingress_from=None)
    kinds = [c["kind"] for c in build_pool_children("p", "team", OllamaPoolSpec(), off)]
    assert "NetworkPolicy" not in kinds


def test_the_policy_evaluator_follows_the_api_rules() -> None:
    """The evaluator the tests rely on: a podSelector-only peer means the policy's namespace,
    an empty namespaceSelector any namespace, no `from` any source, no policy no isolation."""
    policy = {
        "metadata": {"namespace": "a"},
        "spec": {
            "podSelector": {
                "matchExpressions": [{"key": "role", "operator": "In", "values": ["db"]}]
            },
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                    "ports": [{"port": 5432}],
                },
                {
                    "from": [
                        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "ops"}}}
                    ]
                },
            ],
        },
    }
    db = PodRef("a", {"role": "db"})
    assert ingress_allowed([policy], PodRef("a", {"app": "web"}), db, 5432)
    assert not ingress_allowed([policy], PodRef("b", {"app": "web"}), db, 5432)
    assert not ingress_allowed([policy], PodRef("a", {"app": "web"}), db, 22)
    assert ingress_allowed([policy], PodRef("b", {"app": "ops"}), db, 22)
    assert ingress_allowed([policy], PodRef("b", {}), PodRef("a", {"role": "cache"}), 22)
    assert ingress_allowed([], PodRef("b", {}), db, 5432)
