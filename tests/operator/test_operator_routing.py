"""On the local control plane: the gateway learns a pool's replica addresses from the operator
(through the database), and a scale-down takes a replica out of rotation before it goes."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import psycopg
import pytest
from kubernetes.client.exceptions import ApiException
from operator_harness import OLLAMA_PORT, Kube, OperatorProcess, wait_for
from prometheus_client.parser import text_string_to_metric_families
from test_operator_models import model_alias, new_key, pod_ips, pool

from tollgate_dev.servers.programs import GatewayProcess

pytestmark = pytest.mark.cluster
HOLD = "test.tollgate.dev/hold"  # a finalizer of this test: the Pod stays while terminating


def replicas_in_row(db: psycopg.Connection[Any], alias: str) -> list[dict[str, str]] | None:
    row = db.execute("SELECT replicas FROM models WHERE alias = %s", (alias,)).fetchone()
    return None if row is None else row[0]


def gateway_replicas(gateway: GatewayProcess, pool_label: str) -> dict[str, float]:
    text = httpx.get(gateway.metrics_url, timeout=5).text
    return {
        s.labels["replica"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "tollgate_replica_up" and s.labels.get("pool") == pool_label
    }


def hold(kube: Kube, namespace: str, name: str, on: bool) -> None:
    body = {"metadata": {"finalizers": [HOLD] if on else None}}
    try:
        kube.core.patch_namespaced_pod(name, namespace, body)
    except ApiException as exc:
        if exc.status != 404:
            raise


def test_the_gateway_follows_a_pools_replicas_and_a_scale_down(
    operator: OperatorProcess,
    kube: Kube,
    namespace: str,
    op_gateway: GatewayProcess,
    db: psycopg.Connection[Any],
) -> None:
    kube.create(pool(namespace, "routed", replicas=3, routing={"policy": "roundRobin"}))
    alias = f"routed-{namespace}"
    kube.create(model_alias(namespace, "routed", alias, "llama3.2:1b", "routed"))
    wait_for(
        "the model on all three replicas",
        lambda: (
            kube.ready("modelaliases", namespace, "routed")
            and kube.get("modelaliases", namespace, "routed")["status"]["pulled"] == "3/3"
        ),
        timeout=120,
    )
    ips = pod_ips(kube, namespace, "routed")
    assert set(ips) == {"routed-0", "routed-1", "routed-2"}
    want = [{"name": n, "url": f"http://{ip}:{OLLAMA_PORT}"} for n, ip in sorted(ips.items())]
    wait_for("the row to list the replicas", lambda: replicas_in_row(db, alias) == want)
    row = db.execute("SELECT routing FROM models WHERE alias = %s", (alias,)).fetchone()
    assert row is not None
    assert row[0] == {
        "pool": f"{namespace}/routed",
        "policy": "roundRobin",
        "prefix_chars": 256,
        "slots": 1,
    }

    label = f"{namespace}/routed"
    wait_for(
        "the gateway to learn the three addresses",
        lambda: gateway_replicas(op_gateway, label) == dict.fromkeys(ips, 1.0),
        timeout=30,
    )
    key = new_key(kube, namespace, "user", [alias])
    oai = openai.OpenAI(base_url=op_gateway.url + "/v1", api_key=key, max_retries=0)

    def served() -> dict[str, int]:
        return {
            name: httpx.get(f"http://{ip}:{OLLAMA_PORT}/_standin/stats", timeout=5)
            .json()["requests"]
            .get("/v1/chat/completions", 0)
            for name, ip in ips.items()
        }

    def chats(n: int) -> dict[str, int]:
        before = served()
        for _ in range(n):
            oai.chat.completions.create(
                model=alias, messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
        after = served()
        return {name: after[name] - before[name] for name in before}

    spread = wait_for("chats through the gateway", lambda: chats(6), timeout=30)
    assert spread == {"routed-0": 2, "routed-1": 2, "routed-2": 2}, spread

    # Scale down: routed-2 terminates (held by our finalizer so the Pod stays meanwhile);
    # it leaves the row and the gateway's rotation while the Pod still exists.
    hold(kube, namespace, "routed-2", True)
    try:
        kube.patch("ollamapools", namespace, "routed", {"replicas": 2})
        wait_for(
            "routed-2 to be terminating",
            lambda: (
                kube.core.read_namespaced_pod("routed-2", namespace).metadata.deletion_timestamp
            ),
        )
        wait_for(
            "the row without routed-2",
            lambda: (
                [r["name"] for r in replicas_in_row(db, alias) or []] == ["routed-0", "routed-1"]
            ),
        )
        wait_for(
            "the gateway to drop routed-2",
            lambda: set(gateway_replicas(op_gateway, label)) == {"routed-0", "routed-1"},
            timeout=30,
        )
        # The Pod is still there: it was out of rotation before it went.
        assert kube.core.read_namespaced_pod("routed-2", namespace).metadata.deletion_timestamp
        ips.pop("routed-2")
        assert sum(chats(4).values()) == 4  # all answered by the two that stay
    finally:
        hold(kube, namespace, "routed-2", False)
