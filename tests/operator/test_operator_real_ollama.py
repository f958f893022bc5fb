"""The operator pulls a real model from a local OCI registry into a real Ollama on a Pod IP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from operator_harness import OLLAMA_PORT, FakeCluster, Kube, OperatorProcess, wait_for
from test_operator_models import model_alias, new_key, pod_ips, pool

from tollgate_dev.plugins.ollama import RealOllamaPods
from tollgate_dev.servers.programs import GatewayProcess

pytestmark = pytest.mark.cluster
POOL = "real-llm"


@pytest.fixture
def real_pool(fake_cluster: FakeCluster, real_ollama_pods: RealOllamaPods) -> Iterator[str]:
    """Pods of the pool named POOL run a real Ollama (empty models folder) on their IP."""
    fake_cluster.runtimes[POOL] = lambda ip: real_ollama_pods.start(ip, OLLAMA_PORT)
    yield POOL
    fake_cluster.runtimes.pop(POOL, None)


def test_operator_pulls_from_a_local_registry_into_a_real_ollama(
    operator: OperatorProcess,
    kube: Kube,
    namespace: str,
    op_gateway: GatewayProcess,
    real_pool: str,
    registry_tiny: str,
) -> None:
    kube.create(pool(namespace, real_pool))
    kube.create(model_alias(namespace, "tiny", "tiny-op", registry_tiny, real_pool))
    seen: list[dict[str, Any]] = []

    def ready() -> bool:
        obj = kube.get("modelaliases", namespace, "tiny")
        seen.extend((obj.get("status") or {}).get("pods") or [])
        return kube.ready("modelaliases", namespace, "tiny") is not None

    wait_for("the tiny model pulled into the real Ollama", ready, timeout=180)
    status = kube.get("modelaliases", namespace, "tiny")["status"]
    assert status["pulled"] == "1/1"
    assert any(p.get("total", 0) > 0 for p in seen), seen  # real progress reached status
    ip = pod_ips(kube, namespace, real_pool)[f"{real_pool}-0"]
    listed = httpx.get(f"http://{ip}:{OLLAMA_PORT}/api/tags", timeout=10).json()["models"]
    assert registry_tiny in {m["name"] for m in listed}

    key = new_key(kube, namespace, "user", ["tiny-op"])
    with openai.OpenAI(base_url=op_gateway.url + "/v1", api_key=key, max_retries=0) as client:
        answer = wait_for(
            "a chat with the real model through the gateway",
            lambda: _chat(client),
            timeout=30,
        )
    assert answer.model == "tiny-op"
    assert answer.usage is not None and answer.usage.completion_tokens > 0


def _chat(client: openai.OpenAI) -> Any:
    try:
        return client.chat.completions.create(
            model="tiny-op", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
        )
    except openai.APIError:
        return None
