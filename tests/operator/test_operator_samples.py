"""Every sample in manifests/samples/ applies as documented and becomes Ready."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_harness import PLURALS, SAMPLES, FakeCluster, Kube, OperatorProcess, wait_for

from tollgate_dev.plugins.cluster import ClusterHandle
from tollgate_dev.servers.programs import GatewayProcess

pytestmark = pytest.mark.cluster

NAMESPACE = "tollgate-demo"


def documents() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(SAMPLES.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


@pytest.fixture
def demo(kube: Kube) -> Iterator[str]:
    yield NAMESPACE
    with contextlib.suppress(ApiException):
        kube.core.delete_namespace(NAMESPACE)


def test_every_sample_becomes_ready(
    operator: OperatorProcess,
    fake_cluster: FakeCluster,
    op_gateway: GatewayProcess,
    kube: Kube,
    k8s_cluster: ClusterHandle,
    demo: str,
) -> None:
    k8s_cluster.kubectl("apply", "-f", str(SAMPLES / "00-namespace.yaml"))
    # What apikey-existing-secret.yaml asks its reader to create first.
    kube.core.create_namespaced_secret(
        demo,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="legacy-client-key"),
            string_data={"token": secrets.token_hex(24)},
        ),
    )
    out = k8s_cluster.kubectl("apply", "-f", str(SAMPLES))
    assert "created" in out.stdout

    resources = [d for d in documents() if d["kind"] in PLURALS]
    assert {d["kind"] for d in resources} == set(PLURALS)
    for doc in resources:
        plural, name = PLURALS[doc["kind"]], doc["metadata"]["name"]
        wait_for(
            f"{doc['kind']} {name} to be Ready",
            lambda p=plural, n=name: kube.ready(p, demo, n),
            timeout=90,
        )

    # The basic key sees every alias of the samples at the gateway.
    key = kube.secret(demo, "demo-app-api-key")["OPENAI_API_KEY"]  # type: ignore[index]
    aliases = {d["spec"]["alias"] for d in resources if d["kind"] == "ModelAlias"}

    def listed() -> set[str]:
        models = httpx.get(
            op_gateway.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10
        ).json()
        return {m["id"] for m in models["data"]}

    # Ready is the operator's word; the gateway learns the aliases through the change feed.
    wait_for("the gateway to list every sample alias", lambda: aliases <= listed(), timeout=15)
    assert aliases <= listed()
