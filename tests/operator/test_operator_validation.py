"""The CRDs are the API: specs that can never work are refused by the API server (422),
with a message that says what to fix. No operator needed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from operator_harness import PLURALS, Kube

pytestmark = pytest.mark.cluster


def obj(kind: str, spec: dict[str, Any], name: str = "x") -> dict[str, Any]:
    return {
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }


ALIAS = {"alias": "a", "model": "llama3:8b", "poolRef": {"name": "p"}}

INVALID: list[tuple[str, dict[str, Any], str]] = [
    (
        "budget is not a decimal",
        obj("ApiKey", {"monthlyBudget": "12.x"}),
        "monthlyBudget must be a decimal amount",
    ),
    (
        "budget with too many decimals",
        obj("ApiKey", {"monthlyBudget": "1.123456789"}),
        "monthlyBudget must be a decimal amount",
    ),
    (
        "an unknown priority",
        obj("ApiKey", {"priority": "urgent"}),
        "priority must be interactive, standard, batch or a weight greater than 0",
    ),
    (
        "a zero weight",
        obj("ApiKey", {"priority": "0.0"}),
        "priority must be interactive, standard, batch or a weight greater than 0",
    ),
    (
        "negative rpm",
        obj("ApiKey", {"limits": {"requestsPerMinute": -1}}),
        "requestsPerMinute must be a positive number",
    ),
    (
        "zero concurrency",
        obj("ApiKey", {"limits": {"concurrency": 0}}),
        "concurrency must be a positive number",
    ),
    (
        "expiry is not a date-time",
        obj("ApiKey", {"expiresAt": "tomorrow"}),
        "must be of type date-time",
    ),
    (
        "a comma in an allowed model",
        obj("ApiKey", {"allowedModels": ["gpt-4,gpt-5"]}),
        "an allowed model is an alias or a glob",
    ),
    ("no allowed models", obj("ApiKey", {"allowedModels": []}), "should have at least 1 items"),
    (
        "rotation of a key from an existing Secret",
        obj("ApiKey", {"existingSecret": {"name": "mine"}, "rotation": {"token": "1"}}),
        "rotation applies to generated keys",
    ),
    (
        "existing Secret is the one the operator writes",
        obj("ApiKey", {"existingSecret": {"name": "x-api-key"}}),
        "must differ from the Secret the operator writes",
    ),
    ("secret name not a DNS name", obj("ApiKey", {"secretName": "Not_A_Name"}), "should match"),
    (
        "negative grace period",
        obj("ApiKey", {"rotation": {"token": "1", "gracePeriodSeconds": -5}}),
        "should be greater than or equal to 0",
    ),
    (
        "unknown type for disabled",
        obj("ApiKey", {"disabled": "yes"}),
        "must be of type boolean",
    ),
    (
        "alias starting with a dash",
        obj("ModelAlias", {**ALIAS, "alias": "-gpt"}),
        "alias must start with a letter or digit",
    ),
    (
        "alias with a space",
        obj("ModelAlias", {**ALIAS, "alias": "my model"}),
        "alias must start with a letter or digit and contain only",
    ),
    (
        "alias too long",
        obj("ModelAlias", {**ALIAS, "alias": "a" * 201}),
        "alias must be 1 to 200 characters long",
    ),
    (
        "model is not an Ollama tag",
        obj("ModelAlias", {**ALIAS, "model": "llama 3"}),
        "model must be an Ollama tag",
    ),
    (
        "no poolRef",
        obj("ModelAlias", {"alias": "a", "model": "llama3:8b"}),
        "spec.poolRef: Required value",
    ),
    (
        "negative price",
        obj("ModelAlias", {**ALIAS, "prices": {"inputPerMillionTokens": "-1"}}),
        "prices must be decimal amounts",
    ),
    (
        "negative replicas",
        obj("OllamaPool", {"replicas": -1}),
        "should be greater than or equal to 0",
    ),
    ("too many GPUs", obj("OllamaPool", {"gpus": 17}), "should be less than or equal to 16"),
    (
        "keepAlive is not a duration",
        obj("OllamaPool", {"keepAlive": "forever"}),
        "keepAlive must be a duration",
    ),
    (
        "routing policy unknown",
        obj("OllamaPool", {"routing": {"policy": "random"}}),
        'supported values: "modelAware", "leastLoad", "roundRobin"',
    ),
    (
        "prefixChars without modelAware",
        obj("OllamaPool", {"routing": {"policy": "roundRobin", "prefixChars": 128}}),
        "prefixChars applies to policy modelAware only",
    ),
    (
        "prefixChars negative",
        obj("OllamaPool", {"routing": {"prefixChars": -1}}),
        "should be greater than or equal to 0",
    ),
    (
        "env overriding OLLAMA_HOST",
        obj("OllamaPool", {"env": [{"name": "OLLAMA_HOST", "value": "0.0.0.0:1"}]}),
        "OLLAMA_HOST, OLLAMA_MODELS and HOME are set by the operator",
    ),
    (
        "env with both a value and valueFrom",
        obj(
            "OllamaPool",
            {"env": [{"name": "X", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "a"}}}]},
        ),
        "an env entry has either value or valueFrom",
    ),
    (
        "env valueFrom with two sources",
        obj(
            "OllamaPool",
            {
                "env": [
                    {
                        "name": "X",
                        "valueFrom": {
                            "fieldRef": {"fieldPath": "spec.nodeName"},
                            "secretKeyRef": {"name": "s", "key": "k"},
                        },
                    }
                ]
            },
        ),
        "valueFrom has exactly one of fieldRef, resourceFieldRef, secretKeyRef, configMapKeyRef",
    ),
    (
        "env valueFrom with no known source",
        obj("OllamaPool", {"env": [{"name": "X", "valueFrom": {"fileRef": {"path": "/etc"}}}]}),
        "valueFrom has exactly one of",
    ),
    (
        "storage size is not a quantity",
        obj("OllamaPool", {"storage": {"size": "lots"}}),
        "spec.storage.size in body should match",
    ),
    (
        "unknown pull policy",
        obj("OllamaPool", {"imagePullPolicy": "Sometimes"}),
        'Unsupported value: "Sometimes"',
    ),
    (
        "autoscaling minReplicas above maxReplicas",
        obj("OllamaPool", {"autoscaling": {"minReplicas": 3, "maxReplicas": 2}}),
        "minReplicas must not exceed maxReplicas",
    ),
    (
        "autoscaling without maxReplicas",
        obj("OllamaPool", {"autoscaling": {"minReplicas": 1}}),
        "spec.autoscaling.maxReplicas: Required value",
    ),
    (
        "autoscaling maxReplicas zero",
        obj("OllamaPool", {"autoscaling": {"maxReplicas": 0}}),
        "should be greater than or equal to 1",
    ),
    (
        "autoscaling minReplicas negative",
        obj("OllamaPool", {"autoscaling": {"minReplicas": -1, "maxReplicas": 2}}),
        "should be greater than or equal to 0",
    ),
    (
        "autoscaling target below 10 percent",
        obj("OllamaPool", {"autoscaling": {"maxReplicas": 2, "targetLoadPercent": 5}}),
        "should be greater than or equal to 10",
    ),
    (
        "autoscaling cold start of zero seconds",
        obj("OllamaPool", {"autoscaling": {"maxReplicas": 2, "coldStartSeconds": 0}}),
        "should be greater than or equal to 1",
    ),
    (
        "autoscaling negative scale-down delay",
        obj("OllamaPool", {"autoscaling": {"maxReplicas": 2, "scaleDownDelaySeconds": -1}}),
        "should be greater than or equal to 0",
    ),
    (
        "autoscaling warmModels twice the same",
        obj("OllamaPool", {"autoscaling": {"maxReplicas": 2, "warmModels": ["a", "a"]}}),
        'Duplicate value: "a"',
    ),
]


def create(kube: Kube, namespace: str, body: dict[str, Any]) -> None:
    body = {**body, "metadata": {**body["metadata"], "namespace": namespace}}
    kube.create(body)


def rejected(exc: ApiException) -> str:
    assert exc.status == 422, exc.body
    message: str = json.loads(exc.body)["message"]
    return message


@pytest.mark.parametrize(("what", "body", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_specs_are_refused(
    crds: list[str], kube: Kube, namespace: str, what: str, body: dict[str, Any], message: str
) -> None:
    with pytest.raises(ApiException) as caught:
        create(kube, namespace, body)
    assert message in rejected(caught.value), what


IMMUTABLE: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    (
        "ApiKey secretName",
        obj("ApiKey", {"secretName": "one"}),
        {"secretName": "two"},
        "secretName is immutable",
    ),
    (
        "ApiKey secretName added",
        obj("ApiKey", {}),
        {"secretName": "two"},
        "secretName is immutable",
    ),
    (
        "ApiKey existingSecret",
        obj("ApiKey", {"existingSecret": {"name": "mine", "key": "token"}}),
        {"existingSecret": {"name": "mine", "key": "other"}},
        "existingSecret is immutable",
    ),
    (
        "ModelAlias poolRef",
        obj("ModelAlias", ALIAS),
        {"poolRef": {"name": "other"}},
        "poolRef is immutable",
    ),
    (
        "OllamaPool storage",
        obj("OllamaPool", {"storage": {"size": "10Gi"}}),
        {"storage": {"size": "20Gi"}},
        "storage is immutable",
    ),
]


@pytest.mark.parametrize(
    ("what", "body", "change", "message"), IMMUTABLE, ids=[c[0] for c in IMMUTABLE]
)
def test_unsafe_changes_are_refused(
    crds: list[str],
    kube: Kube,
    namespace: str,
    what: str,
    body: dict[str, Any],
    change: dict[str, Any],
    message: str,
) -> None:
    create(kube, namespace, body)
    with pytest.raises(ApiException) as caught:
        kube.patch(PLURALS[body["kind"]], namespace, body["metadata"]["name"], change)
    assert message in rejected(caught.value), what


def test_defaults_are_filled_in(crds: list[str], kube: Kube, namespace: str) -> None:
    create(kube, namespace, obj("OllamaPool", {}, name="defaults"))
    create(kube, namespace, obj("ApiKey", {}, name="defaults"))
    create(kube, namespace, obj("ModelAlias", ALIAS, name="defaults"))
    pool = kube.get("ollamapools", namespace, "defaults")["spec"]
    assert pool == {
        "replicas": 1,
        "gpus": 1,
        "gpuResourceName": "nvidia.com/gpu",
        "storage": {"size": "50Gi"},
    }
    assert kube.get("apikeys", namespace, "defaults")["spec"] == {
        "allowedModels": ["*"],
        "disabled": False,
    }
    alias = kube.get("modelaliases", namespace, "defaults")["spec"]
    assert (alias["enabled"], alias["deleteModelOnRemoval"]) == (True, False)
    create(kube, namespace, obj("OllamaPool", {"autoscaling": {"maxReplicas": 2}}, name="auto"))
    assert kube.get("ollamapools", namespace, "auto")["spec"]["autoscaling"] == {
        "minReplicas": 0,
        "maxReplicas": 2,
        "targetLoadPercent": 100,
        "scaleUpDelaySeconds": 0,
        "scaleDownDelaySeconds": 300,
        "coldStartSeconds": 600,
        "drainSeconds": 120,
    }


@pytest.mark.parametrize("priority", ["interactive", "standard", "batch", "2.5", "10"])
def test_priorities_are_accepted(
    crds: list[str], kube: Kube, namespace: str, priority: str
) -> None:
    name = "prio-" + priority.replace(".", "-")
    create(kube, namespace, obj("ApiKey", {"priority": priority}, name=name))
    assert kube.get("apikeys", namespace, name)["spec"]["priority"] == priority
