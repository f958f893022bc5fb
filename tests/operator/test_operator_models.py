"""OllamaPool and ModelAlias, end to end: Pods on fake GPU nodes with an Ollama stand-in on
each Pod's IP, pulls with progress, chats through the gateway to the pool."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import psycopg
import pytest
from kubernetes import client
from operator_harness import OLLAMA_PORT, FakeCluster, Kube, OperatorProcess, wait_for

from tollgate_dev.plugins.cluster import ClusterHandle
from tollgate_dev.servers.programs import GatewayProcess
from tollgate_operator.services.aliases import RETRY_FIRST_SECONDS

pytestmark = pytest.mark.cluster


@pytest.fixture(autouse=True)
def _operator(operator: OperatorProcess, fake_cluster: FakeCluster) -> None:
    """Every test here needs the operator and the fake runtime."""


def pool(namespace: str, name: str, replicas: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "OllamaPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": replicas, "gpus": 1, "storage": {"size": "1Gi"}, **spec},
    }


def model_alias(
    namespace: str, name: str, alias: str, model: str, pool: str, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "ModelAlias",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"alias": alias, "model": model, "poolRef": {"name": pool}, **spec},
    }


def pod_ips(kube: Kube, namespace: str, pool: str) -> dict[str, str]:
    pods = kube.core.list_namespaced_pod(namespace, label_selector=f"tollgate.dev/pool={pool}")
    return {p.metadata.name: p.status.pod_ip for p in pods.items if p.status.pod_ip}


def tags(ip: str) -> set[str]:
    response = httpx.get(f"http://{ip}:{OLLAMA_PORT}/api/tags", timeout=5)
    return {m["name"] for m in response.json()["models"]}


def model_row(db: psycopg.Connection[Any], alias: str) -> dict[str, Any] | None:
    cursor = db.execute(
        "SELECT alias, backend_tag, backend_url, enabled, input_price_per_mtok, managed_by "
        "FROM models WHERE alias = %s",
        (alias,),
    )
    row = cursor.fetchone()
    names = [c.name for c in cursor.description or []]
    return dict(zip(names, row, strict=True)) if row else None


def reason(kube: Kube, namespace: str, name: str, type_: str = "Ready") -> str | None:
    cond = kube.condition(kube.get("modelaliases", namespace, name), type_)
    return cond["reason"] if cond else None


def new_key(kube: Kube, namespace: str, name: str, models: list[str]) -> str:
    kube.create(
        {
            "apiVersion": "tollgate.dev/v1alpha1",
            "kind": "ApiKey",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"allowedModels": models},
        }
    )
    wait_for(f"ApiKey {name}", lambda: kube.ready("apikeys", namespace, name))
    secret = kube.secret(namespace, f"{name}-api-key")
    assert secret is not None
    return secret["api-key"]


def test_pool_children(kube: Kube, namespace: str, k8s_cluster: ClusterHandle) -> None:
    kube.create(pool(namespace, "gpu", keepAlive="10m", numParallel=2))
    obj = wait_for("pool gpu to be Ready", lambda: kube.ready("ollamapools", namespace, "gpu"))
    assert obj["status"]["readyReplicas"] == 1
    apps = client.AppsV1Api(kube.api)
    sts = apps.read_namespaced_stateful_set("gpu", namespace)
    container = sts.spec.template.spec.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    env = {e.name: e.value for e in container.env}
    assert env["OLLAMA_KEEP_ALIVE"] == "10m"
    assert env["OLLAMA_NUM_PARALLEL"] == "2"
    assert sts.spec.volume_claim_templates[0].spec.resources.requests["storage"] == "1Gi"
    assert sts.metadata.owner_references[0].uid == obj["metadata"]["uid"]
    services = {s.metadata.name: s for s in kube.core.list_namespaced_service(namespace).items}
    assert services["gpu"].spec.cluster_ip not in (None, "None")
    assert services["gpu-headless"].spec.cluster_ip == "None"
    pdb = client.PolicyV1Api(kube.api).read_namespaced_pod_disruption_budget("gpu", namespace)
    assert pdb.spec.max_unavailable == 1
    # The replica's Ollama answers; it holds no models yet.
    status = wait_for(
        "the replica's model list in status",
        lambda: (
            (s := kube.get("ollamapools", namespace, "gpu")["status"])["pods"][0].get("models")
            is not None
            and s
        ),
    )
    assert status["pods"][0] == {"name": "gpu-0", "ready": True, "models": [], "loaded": []}
    assert status["loadedModels"] == 0
    assert status["serviceURL"] == f"http://{services['gpu'].spec.cluster_ip}:{OLLAMA_PORT}"
    # `kubectl get` tells the story.
    out = k8s_cluster.kubectl("get", "ollamapools", "-n", namespace).stdout
    assert out.split("\n")[0].split() == [
        "NAME", "REPLICAS", "DESIRED", "READY", "GPUS", "LOADED", "STATUS", "AGE",
    ]  # fmt: skip
    assert out.split("\n")[1].split()[:7] == ["gpu", "1", "1", "1", "1", "0", "ReplicasReady"]

    # Drift: a StatefulSet changed by hand is put back.
    apps.patch_namespaced_stateful_set("gpu", namespace, {"spec": {"replicas": 3}})
    wait_for(
        "the replicas to be restored",
        lambda: apps.read_namespaced_stateful_set("gpu", namespace).spec.replicas == 1,
    )


def test_alias_pulls_with_progress_serves_chats_and_follows_scale_up(
    operator: OperatorProcess,
    kube: Kube,
    namespace: str,
    op_gateway: GatewayProcess,
    db: psycopg.Connection[Any],
    k8s_cluster: ClusterHandle,
) -> None:
    kube.create(pool(namespace, "llm"))
    kube.create(
        model_alias(
            namespace,
            "chat",
            f"Team/Chat.{namespace}:Fast",
            "llama3.2:1b",
            "llm",
            prices={"inputPerMillionTokens": "0.5", "outputPerMillionTokens": "1.5"},
        )
    )
    alias = f"Team/Chat.{namespace}:Fast"

    # Progress shows in status while the stand-in "downloads".
    seen: list[dict[str, Any]] = []

    def progress() -> bool:
        obj = kube.get("modelaliases", namespace, "chat")
        seen.extend((obj.get("status") or {}).get("pods") or [])
        return kube.ready("modelaliases", namespace, "chat") is not None

    wait_for("alias chat to be Ready", progress, timeout=90)
    pulling = [p for p in seen if p["state"] == "Pulling" and 0 < p.get("percent", 0) < 100]
    assert pulling, seen
    assert pulling[0]["total"] > 0
    status = kube.get("modelaliases", namespace, "chat")["status"]
    assert status["pulled"] == "1/1"
    assert status["servingModel"] == "llama3.2:1b"
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Pulled": "True",
        "Ready": "True",
    }
    row = model_row(db, alias)
    assert row is not None
    assert (row["backend_tag"], row["enabled"]) == ("llama3.2:1b", True)
    assert row["backend_url"] == status["backendURL"]
    assert row["managed_by"] == f"operator:{namespace}/chat"
    ips = pod_ips(kube, namespace, "llm")
    assert "llama3.2:1b" in tags(ips["llm-0"])

    # A chat through the gateway reaches the pool's Pod.
    key = new_key(kube, namespace, "user", [alias])
    before = httpx.get(f"http://{ips['llm-0']}:{OLLAMA_PORT}/_standin/stats").json()
    with openai.OpenAI(base_url=op_gateway.url + "/v1", api_key=key, max_retries=0) as oai:
        answer = wait_for(
            "a chat through the gateway",
            lambda: _chat(oai, alias),
            timeout=20,
        )
    assert answer.model == alias
    after = httpx.get(f"http://{ips['llm-0']}:{OLLAMA_PORT}/_standin/stats").json()
    assert after["requests_total"] > before["requests_total"]
    assert any("chat" in path for path in after["requests"])

    # Scale up: the new replica (a new Pod IP, its own Ollama) gets the model too.
    kube.patch("ollamapools", namespace, "llm", {"replicas": 2})
    wait_for(
        "the model on both replicas",
        lambda: (
            kube.ready("modelaliases", namespace, "chat")
            and kube.get("modelaliases", namespace, "chat")["status"]["pulled"] == "2/2"
        ),
        timeout=90,
    )
    ips = pod_ips(kube, namespace, "llm")
    assert set(ips) == {"llm-0", "llm-1"}
    assert "llama3.2:1b" in tags(ips["llm-1"])
    pool_status = wait_for(
        "the pool status to list the model on both replicas",
        lambda: (
            (s := kube.get("ollamapools", namespace, "llm")["status"])["readyReplicas"] == 2
            and all("llama3.2:1b" in (p.get("models") or []) for p in s["pods"])
            and s
        ),
    )
    assert len(pool_status["pods"]) == 2
    out = k8s_cluster.kubectl("get", "modelaliases", "-n", namespace).stdout
    assert out.split("\n")[1].split()[1:6] == [alias, "llama3.2:1b", "llm", "2/2", "True"]

    # Another tag: the alias keeps routing to the current one until the new one is everywhere.
    kube.patch("modelaliases", namespace, "chat", {"model": "qwen2.5:1.5b"})
    wait_for(
        "the new tag to be served",
        lambda: (
            (obj := kube.ready("modelaliases", namespace, "chat"))
            and obj["status"]["servingModel"] == "qwen2.5:1.5b"
        ),
        timeout=60,
    )
    assert model_row(db, alias)["backend_tag"] == "qwen2.5:1.5b"  # type: ignore[index]
    assert all("qwen2.5:1.5b" in tags(ip) for ip in ips.values())
    assert 'tollgate_operator_pulls_total{result="success"}' in operator.metrics()

    # A replaced Pod (lost its volume, say) is found without the model and gets it again.
    httpx.request(
        "DELETE",
        f"http://{ips['llm-1']}:{OLLAMA_PORT}/api/delete",
        json={"model": "qwen2.5:1.5b"},
    )
    wait_for(
        "the model to be pulled again on llm-1",
        lambda: "qwen2.5:1.5b" in tags(ips["llm-1"]),
        timeout=30,
    )


def _chat(oai: openai.OpenAI, alias: str) -> Any:
    try:
        return oai.chat.completions.create(
            model=alias, messages=[{"role": "user", "content": "hello"}], max_tokens=4
        )
    except openai.NotFoundError:
        return None  # the gateway has not seen the alias yet


def test_missing_pool_conflicts_and_deletion(
    kube: Kube, namespace: str, db: psycopg.Connection[Any]
) -> None:
    alias = f"shared-{namespace}"
    kube.create(
        model_alias(namespace, "first", alias, "qwen2.5:0.5b", "later", deleteModelOnRemoval=True)
    )
    wait_for("PoolNotFound", lambda: reason(kube, namespace, "first") == "PoolNotFound")
    assert (
        kube.condition(kube.get("modelaliases", namespace, "first"), "Ready")["status"] == "False"
    )  # type: ignore[index]

    # The pool appears: the alias recovers without any change to it.
    kube.create(pool(namespace, "later"))
    wait_for("alias first to be Ready", lambda: kube.ready("modelaliases", namespace, "first"), 90)

    # A second alias under the same name is refused with a clear reason.
    kube.create(model_alias(namespace, "dup", alias, "qwen2.5:0.5b", "later"))
    wait_for("AliasConflict", lambda: reason(kube, namespace, "dup") == "AliasConflict")
    msg = kube.condition(kube.get("modelaliases", namespace, "dup"), "Ready")["message"]  # type: ignore[index]
    assert f"operator:{namespace}/first" in msg
    kube.delete("modelaliases", namespace, "dup")

    # Another alias of the same model on the same pool.
    kube.create(model_alias(namespace, "other", f"other-{namespace}", "qwen2.5:0.5b", "later"))
    wait_for("alias other to be Ready", lambda: kube.ready("modelaliases", namespace, "other"))

    # The gateway row, deleted by hand, comes back.
    db.execute("DELETE FROM models WHERE alias = %s", (alias,))
    wait_for("the row to be restored", lambda: model_row(db, alias))

    ip = pod_ips(kube, namespace, "later")["later-0"]
    # Deleting `first` removes its alias but keeps the model: `other` still uses it.
    kube.delete("modelaliases", namespace, "first")
    wait_for("alias first to be gone", lambda: kube.gone("modelaliases", namespace, "first"))
    assert model_row(db, alias) is None
    assert "qwen2.5:0.5b" in tags(ip)
    # Deleting the last user with deleteModelOnRemoval removes the model from the pool.
    kube.patch("modelaliases", namespace, "other", {"deleteModelOnRemoval": True})
    wait_for(
        "the change to be handled",
        lambda: kube.get("modelaliases", namespace, "other")["status"]["observedGeneration"] == 2,
    )
    kube.delete("modelaliases", namespace, "other")
    wait_for("alias other to be gone", lambda: kube.gone("modelaliases", namespace, "other"))
    assert "qwen2.5:0.5b" not in tags(ip)


def test_a_model_that_cannot_be_pulled(kube: Kube, namespace: str) -> None:
    kube.create(pool(namespace, "p"))
    kube.create(model_alias(namespace, "bad", f"bad-{namespace}", "no-such-model:1b", "p"))
    cond = wait_for(
        "Pulled=False PullFailed",
        lambda: (
            (c := kube.condition(kube.get("modelaliases", namespace, "bad"), "Pulled"))
            and c["reason"] == "PullFailed"
            and c
        ),
        timeout=60,
    )
    assert "file does not exist" in cond["message"]
    items = kube.core.list_namespaced_event(namespace, field_selector="involvedObject.name=bad")
    assert "PullFailed" in {e.reason for e in items.items}
    # No retry storm: the failed pull is retried with a growing delay (5 s first). Waits for
    # the retry itself, then looks at when each pull came.
    standin = f"http://{pod_ips(kube, namespace, 'p')['p-0']}:{OLLAMA_PORT}/_standin"

    def pulls() -> list[float] | None:
        entries = httpx.get(f"{standin}/requests", params={"path": "/api/pull"}).json()
        times = [float(e["time"]) for e in entries["requests"]]
        return times if len(times) >= 2 else None

    first, second, *_ = wait_for("the failed pull to be retried", pulls, timeout=60)
    assert second - first >= RETRY_FIRST_SECONDS / 2  # a delay, not a storm
    stats = httpx.get(f"{standin}/stats").json()
    assert stats["requests"].get("/api/pull", 0) <= 2
