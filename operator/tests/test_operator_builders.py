"""Builders are pure: manifests from specs, checked without a cluster."""

from __future__ import annotations

import base64
from typing import Any

from tollgate_operator.builders.labels import POOL_LABEL, pool_selector
from tollgate_operator.builders.pool import (
    DATA_DIR,
    MODELS_DIR,
    PoolDefaults,
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
        ("Service", "p"),
        ("Service", "p-headless"),
        ("StatefulSet", "p"),
        ("PodDisruptionBudget", "p"),
    ]
    service, headless = children[0], children[1]
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
