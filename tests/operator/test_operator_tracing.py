"""The operator's reconciles as spans in a real Jaeger: one per handler run, with the
object's kind, namespace and name."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from operator_harness import Kube, OperatorProcess, wait_for

from tollgate_dev.servers.jaeger import JaegerServer

pytestmark = pytest.mark.cluster


def reconcile_spans(jaeger: JaegerServer, namespace: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{jaeger.query_url}/api/traces",
        params={"service": "tollgate-operator", "operation": "reconcile ApiKey", "limit": 200},
        timeout=5,
    )
    if response.status_code != 200:
        return []
    spans = [s for t in response.json().get("data") or [] for s in t["spans"]]
    found = []
    for span in spans:
        tags = {t["key"]: t["value"] for t in span["tags"]}
        if tags.get("k8s.namespace.name") == namespace:
            found.append(tags)
    return found


def test_an_apikey_reconcile_is_a_span_with_the_object(
    kube: Kube, namespace: str, operator: OperatorProcess, jaeger: JaegerServer
) -> None:
    kube.create(
        {
            "apiVersion": "tollgate.dev/v1alpha1",
            "kind": "ApiKey",
            "metadata": {"name": "traced", "namespace": namespace},
            "spec": {"owner": "team-a"},
        }
    )
    wait_for("ApiKey traced to be Ready", lambda: kube.ready("apikeys", namespace, "traced"))
    kube.delete("apikeys", namespace, "traced")
    spans = wait_for(
        "a change and a delete span in Jaeger",
        lambda: (
            (s := reconcile_spans(jaeger, namespace))
            and {t["tollgate.reconcile.trigger"] for t in s} >= {"change", "delete"}
            and s
        ),
        timeout=30,
    )
    change = next(t for t in spans if t["tollgate.reconcile.trigger"] == "change")
    assert change["tollgate.object.kind"] == "ApiKey"
    assert change["tollgate.object.name"] == "traced"
    assert change["tollgate.reconcile.result"] == "ok"
    assert change["span.kind"] == "internal"
