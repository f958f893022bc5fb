"""ModelAlias ``spec.requestPolicy`` on a real API server: values that can never work are
refused (422) with a message that says what to fix, a valid policy is kept with its
default mode, and ``kubectl get`` shows the policy's columns. No operator needed."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from operator_harness import Kube

from tollgate_dev.plugins.cluster import ClusterHandle

pytestmark = pytest.mark.cluster

ALIAS = {"alias": "a", "model": "llama3:8b", "poolRef": {"name": "p"}}


def alias(namespace: str, name: str, policy: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "ModelAlias",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {**ALIAS, "requestPolicy": policy},
    }


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("zero output tokens", {"maxOutputTokens": 0}, "should be greater than or equal to 1"),
    (
        "output tokens over int32",
        {"maxOutputTokens": 2**31},
        "should be less than or equal to 2147483647",
    ),
    (
        "default over the cap",
        {"maxOutputTokens": 256, "defaultOutputTokens": 512},
        "defaultOutputTokens must not exceed maxOutputTokens",
    ),
    (
        "fixed and capped num_ctx",
        {"numCtx": 4096, "maxNumCtx": 8192},
        "set numCtx (a fixed value) or maxNumCtx (a cap), not both",
    ),
    ("negative num_ctx cap", {"maxNumCtx": -1}, "should be greater than or equal to 1"),
    ("keepAlive not a duration", {"keepAlive": "forever"}, "keepAlive must be a duration"),
    ("keepAlive with a bad unit", {"keepAlive": "5d"}, "keepAlive must be a duration"),
    (
        "an option name that is no option",
        {"allowedOptions": ["temperature", "Top P"]},
        "allowedOptions are Ollama option names",
    ),
    ("an option twice", {"allowedOptions": ["top_p", "top_p"]}, "Duplicate value"),
    ("unknown mode", {"mode": "sometimes"}, 'supported values: "clamp", "reject"'),
    ("keepAlive as a number", {"keepAlive": 300}, "must be of type string"),
]


@pytest.mark.parametrize(("what", "policy", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_request_policies_are_refused(
    crds: list[str], kube: Kube, namespace: str, what: str, policy: dict[str, Any], message: str
) -> None:
    with pytest.raises(ApiException) as caught:
        kube.create(alias(namespace, "x", policy))
    assert caught.value.status == 422, caught.value.body
    assert message in json.loads(caught.value.body)["message"], what


def test_a_valid_policy_is_kept_with_its_default_mode(
    crds: list[str], kube: Kube, namespace: str
) -> None:
    policy = {
        "maxOutputTokens": 2048,
        "defaultOutputTokens": 512,
        "maxNumCtx": 8192,
        "keepAlive": "10m",
        "allowedOptions": ["temperature", "top_p", "seed"],
    }
    kube.create(alias(namespace, "kept", policy))
    stored = kube.get("modelaliases", namespace, "kept")["spec"]["requestPolicy"]
    assert stored == {**policy, "mode": "clamp"}
    kube.create(alias(namespace, "pinned", {"keepAlive": "-1", "numCtx": 4096, "mode": "reject"}))


def columns(table: str) -> dict[str, str]:
    """The first row of a kubectl table by column name (empty cells are blank)."""
    header, row = table.splitlines()[:2]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    ends = [*starts[1:], None]
    return {header[a:b].strip(): row[a:b].strip() for a, b in zip(starts, ends, strict=True)}


def test_kubectl_shows_the_policy(
    crds: list[str], kube: Kube, namespace: str, k8s_cluster: ClusterHandle
) -> None:
    policy = {"maxOutputTokens": 1024, "maxNumCtx": 8192, "keepAlive": "5m", "mode": "reject"}
    kube.create(alias(namespace, "shown", policy))
    out = k8s_cluster.kubectl("get", "modelaliases", "-n", namespace, "shown", "-o", "wide")
    cells = columns(out.stdout)
    assert cells["MAXTOKENS"] == "1024", out.stdout
    assert (cells["MAXCTX"], cells["KEEPALIVE"], cells["POLICY"]) == ("8192", "5m", "reject")
    plain = k8s_cluster.kubectl("get", "modelaliases", "-n", namespace, "shown").stdout
    assert "MAXTOKENS" in plain and "KEEPALIVE" not in plain  # the rest with -o wide
