"""ModelAlias ``spec.requestPolicy`` end to end: the operator writes it into the alias's row
(changes and removal too), and the gateway applies it to what reaches the pool's Pod."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest
from operator_harness import OLLAMA_PORT, FakeCluster, Kube, OperatorProcess, wait_for

from tollgate_dev.servers.programs import GatewayProcess

pytestmark = pytest.mark.cluster

POLICY = {"maxOutputTokens": 32, "maxNumCtx": 1024, "keepAlive": "3m", "mode": "clamp"}
ROW = {"max_output_tokens": 32, "max_num_ctx": 1024, "keep_alive": "3m", "mode": "clamp"}


@pytest.fixture(autouse=True)
def _operator(operator: OperatorProcess, fake_cluster: FakeCluster) -> None:
    """Every test here needs the operator and the fake runtime."""


def policy_row(db: psycopg.Connection[Any], alias: str) -> Any:
    found = db.execute("SELECT request_policy FROM models WHERE alias = %s", (alias,)).fetchone()
    assert found is not None, f"no row for {alias}"
    return found[0]


def test_the_policy_reaches_the_row_and_the_pod(
    kube: Kube, namespace: str, op_gateway: GatewayProcess, db: psycopg.Connection[Any]
) -> None:
    kube.create(
        {
            "apiVersion": "tollgate.dev/v1alpha1",
            "kind": "OllamaPool",
            "metadata": {"name": "pol", "namespace": namespace},
            "spec": {"replicas": 1, "gpus": 1, "storage": {"size": "1Gi"}},
        }
    )
    alias = f"policy.{namespace}"
    kube.create(
        {
            "apiVersion": "tollgate.dev/v1alpha1",
            "kind": "ModelAlias",
            "metadata": {"name": "capped", "namespace": namespace},
            "spec": {
                "alias": alias,
                "model": "llama3.2:1b",
                "poolRef": {"name": "pol"},
                "requestPolicy": POLICY,
            },
        }
    )
    wait_for("alias capped to be Ready", lambda: kube.ready("modelaliases", namespace, "capped"))
    assert policy_row(db, alias) == ROW

    kube.create(
        {
            "apiVersion": "tollgate.dev/v1alpha1",
            "kind": "ApiKey",
            "metadata": {"name": "caller", "namespace": namespace},
            "spec": {"allowedModels": [alias]},
        }
    )
    wait_for("ApiKey caller", lambda: kube.ready("apikeys", namespace, "caller"))
    secret = kube.secret(namespace, "caller-api-key")
    assert secret is not None
    headers = {"Authorization": f"Bearer {secret['api-key']}"}
    body = {
        "model": alias,
        "stream": False,
        "messages": [{"role": "user", "content": "hello"}],
        "options": {"num_ctx": 65536, "num_predict": 4096},
        "keep_alive": -1,
    }

    def chat() -> bool:
        r = httpx.post(op_gateway.url + "/api/chat", json=body, headers=headers, timeout=30)
        return r.status_code == 200  # 404 until the gateway has seen the alias and key

    wait_for("a chat through the gateway", chat, timeout=20)
    pods = kube.core.list_namespaced_pod(namespace, label_selector="tollgate.dev/pool=pol")
    (ip,) = [p.status.pod_ip for p in pods.items if p.status.pod_ip]
    seen = httpx.get(
        f"http://{ip}:{OLLAMA_PORT}/_standin/requests", params={"path": "/api/chat"}
    ).json()["requests"]
    upstream = seen[-1]["body"]
    assert upstream["options"] == {"num_ctx": 1024, "num_predict": 32}
    assert upstream["keep_alive"] == "3m"

    # A change of the policy reaches the row; removing it clears the row's policy.
    kube.patch("modelaliases", namespace, "capped", {"requestPolicy": {"maxOutputTokens": 8}})
    wait_for(
        "the changed policy in the row",
        lambda: policy_row(db, alias) == {**ROW, "max_output_tokens": 8},
    )
    kube.patch("modelaliases", namespace, "capped", {"requestPolicy": None})
    wait_for("no policy in the row", lambda: policy_row(db, alias) is None)
