"""Routing over several Ollama stand-in replicas listed on an alias (what `make run` does; in a
cluster the operator writes the same list from the pool's Pods).

Where each request went is read from the replicas themselves (the stand-in counts requests
per path), so the tests do not trust the gateway's own account.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tollgate_dev.plugins.services import Admin
from tollgate_dev.servers.programs import GatewayProcess, StandinProcess

NewKey = Callable[..., dict[str, Any]]
CHAT = "/v1/chat/completions"
MODELS = "alpha:latest,beta:latest,gamma:latest"


def start_replica(service_dir: Path, name: str, *extra: str) -> StandinProcess:
    proc = StandinProcess(
        models=MODELS,
        log_path=service_dir / f"replica-{name}.log",
        extra=["--max-loaded-models", "1", "--load-ms", "300", "--registry", "*", *extra],
    )
    proc.start()
    return proc


@pytest.fixture
def replicas(service_dir: Path) -> Iterator[dict[str, StandinProcess]]:
    procs = {name: start_replica(service_dir, name) for name in ("r0", "r1", "r2")}
    yield procs
    for proc in procs.values():
        proc.stop()


def new_pool() -> str:
    return "test/" + secrets.token_hex(4)


def alias_over(
    admin: Admin, procs: dict[str, StandinProcess], tag: str, pool: str, **routing: Any
) -> str:
    """An alias routed over ``procs`` (aliases over the same replicas share a pool)."""
    alias = f"routed-{tag.split(':')[0]}-{secrets.token_hex(3)}"
    response = admin.http.post(
        "/admin/models",
        json={
            "alias": alias,
            "backend_tag": tag,
            "replicas": [{"name": n, "url": p.url} for n, p in procs.items()],
            "routing": {"pool": pool, **routing},
        },
    )
    assert response.status_code == 201, response.text
    return alias


def load(proc: StandinProcess, model: str) -> None:
    """Ask a replica directly, so it holds ``model`` in memory."""
    httpx.post(
        proc.url + "/api/generate", json={"model": model, "prompt": "hi", "stream": False}
    ).raise_for_status()


def served(procs: dict[str, StandinProcess], path: str = CHAT) -> dict[str, int]:
    out = {}
    for name, proc in procs.items():
        try:
            stats = httpx.get(proc.url + "/_standin/stats", timeout=5).json()
        except httpx.TransportError:
            out[name] = -1  # not running
            continue
        out[name] = int(stats["requests"].get(path, 0))
    return out


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in before if after[k] - before[k]}


def metric(gateway: GatewayProcess, name: str, **labels: str) -> float:
    text = httpx.get(gateway.metrics_url, timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def wait_until(what: str, probe: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def client(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=60)


def ask(c: openai.OpenAI, alias: str, messages: list[dict[str, str]] | None = None) -> str:
    result = c.chat.completions.create(
        model=alias, messages=messages or [{"role": "user", "content": "hello"}]
    )
    return result.choices[0].message.content or ""


def knows_loaded(gateway: GatewayProcess, pool: str, replica: str, model: str) -> bool:
    labels = {"pool": pool, "replica": replica, "model": model}
    return metric(gateway, "tollgate_replica_model_loaded", **labels) == 1


def test_requests_for_a_model_keep_going_to_the_replica_that_has_it_loaded(
    routing_gateway: GatewayProcess,
    admin: Admin,
    new_key: NewKey,
    replicas: dict[str, StandinProcess],
) -> None:
    load(replicas["r1"], "alpha")
    load(replicas["r2"], "beta")
    pool = new_pool()
    alpha = alias_over(admin, replicas, "alpha", pool)
    beta = alias_over(admin, replicas, "beta", pool)
    gamma = alias_over(admin, replicas, "gamma", pool)
    c = client(routing_gateway, new_key()["key"])
    wait_until(  # the gateway learns the new aliases' replicas and polls them
        "the gateway to see what each replica holds",
        lambda: (
            knows_loaded(routing_gateway, pool, "r1", "alpha:latest")
            and knows_loaded(routing_gateway, pool, "r2", "beta:latest")
        ),
    )
    before = served(replicas)
    for _ in range(6):
        ask(c, alpha)
    assert delta(before, served(replicas)) == {"r1": 6}
    before = served(replicas)
    for _ in range(4):
        ask(c, beta)
    assert delta(before, served(replicas)) == {"r2": 4}
    # Loaded nowhere: the replica with the most room (r0 holds nothing) loads it, once.
    loads_before = httpx.get(replicas["r0"].url + "/_standin/stats").json()["loads"]
    before = served(replicas)
    for _ in range(4):
        ask(c, gamma)
    assert delta(before, served(replicas)) == {"r0": 4}
    assert httpx.get(replicas["r0"].url + "/_standin/stats").json()["loads"] == loads_before + 1
    assert metric(routing_gateway, "tollgate_routing_decisions_total", reason="cold") >= 1
    decisions = metric(routing_gateway, "tollgate_routing_decisions_total", pool=pool, replica="r1")
    assert decisions >= 6


def test_a_conversations_second_turn_lands_on_its_first_turns_replica(
    routing_gateway: GatewayProcess,
    admin: Admin,
    new_key: NewKey,
    replicas: dict[str, StandinProcess],
) -> None:
    for proc in replicas.values():
        load(proc, "alpha")
    pool = new_pool()
    alpha = alias_over(admin, replicas, "alpha", pool)
    c = client(routing_gateway, new_key()["key"])
    wait_until(
        "the gateway to see alpha on every replica",
        lambda: all(knows_loaded(routing_gateway, pool, n, "alpha:latest") for n in replicas),
    )
    homes: set[str] = set()
    for n in range(8):
        first = [
            {"role": "system", "content": f"You are assistant number {n} of the support desk."},
            {"role": "user", "content": f"Question {n}: where is my parcel?"},
        ]
        before = served(replicas)
        answer = ask(c, alpha, first)
        (home,) = delta(before, served(replicas))
        second = [
            *first,
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "And when will it arrive?"},
        ]
        before = served(replicas)
        ask(c, alpha, second)
        assert delta(before, served(replicas)) == {home: 1}, f"conversation {n}"
        homes.add(home)
    assert len(homes) >= 2  # different conversations spread over the replicas


def test_a_replica_whose_pull_has_not_finished_gets_no_traffic(
    routing_gateway: GatewayProcess,
    admin: Admin,
    new_key: NewKey,
    service_dir: Path,
) -> None:
    procs = {
        "r0": start_replica(service_dir, "p0"),
        "r1": start_replica(service_dir, "p1"),
        "late": StandinProcess(
            models="beta:latest",
            log_path=service_dir / "replica-late.log",
            extra=["--registry", "*", "--pull-delay-ms", "4000"],
        ),
    }
    procs["late"].start()
    try:
        pulling = threading.Thread(
            target=lambda: httpx.post(
                procs["late"].url + "/api/pull",
                json={"model": "alpha:latest", "stream": False},
                timeout=30,
            ),
            daemon=True,
        )
        pulling.start()
        pool = new_pool()
        alias = alias_over(admin, procs, "alpha", pool, policy="roundRobin")
        c = client(routing_gateway, new_key()["key"])
        wait_until(
            "the gateway to meet the replicas",
            lambda: metric(routing_gateway, "tollgate_replica_up", pool=pool, replica="late") == 1,
        )
        time.sleep(0.5)  # the gateway has read every replica's /api/tags
        before = served(procs)
        for _ in range(9):
            ask(c, alias)
        during = delta(before, served(procs))
        assert "late" not in during and sum(during.values()) == 9, during
        pulling.join(30)
        wait_until(
            "the pulled model to be listed",
            lambda: (
                "alpha:latest"
                in {m["name"] for m in httpx.get(procs["late"].url + "/api/tags").json()["models"]}
            ),
        )
        time.sleep(0.5)  # polled again
        before = served(procs)
        for _ in range(9):
            ask(c, alias)
        assert delta(before, served(procs)).get("late") == 3  # now in the round
    finally:
        for proc in procs.values():
            proc.stop()


def test_a_killed_replica_is_ejected_and_the_request_in_flight_succeeds_elsewhere(
    routing_gateway: GatewayProcess,
    admin: Admin,
    new_key: NewKey,
    replicas: dict[str, StandinProcess],
) -> None:
    load(replicas["r1"], "alpha")
    pool = new_pool()
    alpha = alias_over(admin, replicas, "alpha", pool)
    c = client(routing_gateway, new_key()["key"])
    wait_until(
        "alpha seen on r1", lambda: knows_loaded(routing_gateway, pool, "r1", "alpha:latest")
    )
    # r1 holds the request without answering; it dies before its first byte.
    httpx.post(
        replicas["r1"].url + "/_standin/faults",
        json={"kind": "delay", "delay_ms": 10_000, "path": CHAT},
    ).raise_for_status()
    result: dict[str, Any] = {}

    def in_flight() -> None:
        try:
            result["answer"] = ask(c, alpha)
        except Exception as exc:  # reported by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=in_flight)
    thread.start()
    wait_until(
        "the request to reach r1",
        lambda: httpx.get(replicas["r1"].url + "/_standin/stats").json()["faults_applied"] >= 1,
    )
    assert replicas["r1"].proc is not None
    replicas["r1"].proc.kill()
    thread.join(30)
    assert "error" not in result, result
    assert result["answer"]
    assert metric(routing_gateway, "tollgate_routing_retries_total", pool=pool) >= 1
    wait_until(
        "r1 ejected",
        lambda: (
            metric(routing_gateway, "tollgate_replica_ejections_total", pool=pool, replica="r1")
            >= 1
        ),
    )
    assert metric(routing_gateway, "tollgate_replica_up", pool=pool, replica="r1") == 0
    others = {n: p for n, p in replicas.items() if n != "r1"}
    before = served(others)
    for _ in range(5):
        ask(c, alpha)  # every one succeeds, none is sent to r1
    assert sum(delta(before, served(others)).values()) == 5


def test_a_connection_dropped_before_any_byte_is_retried_on_another_replica(
    routing_gateway: GatewayProcess,
    admin: Admin,
    new_key: NewKey,
    replicas: dict[str, StandinProcess],
) -> None:
    load(replicas["r0"], "alpha")
    pool = new_pool()
    alpha = alias_over(admin, replicas, "alpha", pool)
    c = client(routing_gateway, new_key()["key"])
    wait_until(
        "alpha seen on r0", lambda: knows_loaded(routing_gateway, pool, "r0", "alpha:latest")
    )

    def drop_next(path: str) -> None:
        httpx.post(
            replicas["r0"].url + "/_standin/faults",
            json={"kind": "drop", "after_chunks": 0, "path": path},
        ).raise_for_status()

    drop_next(CHAT)
    retries = metric(routing_gateway, "tollgate_routing_retries_total", pool=pool)
    dropped = httpx.get(replicas["r0"].url + "/_standin/stats").json()["faults_applied"]
    stream = c.chat.completions.create(
        model=alpha, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert "".join(e.choices[0].delta.content or "" for e in stream if e.choices)
    # The retry loaded alpha on another replica: evict it there, so that r0 is again the one
    # replica holding it and the native request meets r0's fault first.
    for name in ("r1", "r2"):
        load(replicas[name], "gamma")
    wait_until(
        "alpha seen only on r0",
        lambda: (
            not any(knows_loaded(routing_gateway, pool, n, "alpha:latest") for n in ("r1", "r2"))
        ),
    )
    drop_next("/api/chat")
    native = httpx.post(
        routing_gateway.url + "/api/chat",
        headers={"Authorization": f"Bearer {c.api_key}"},
        json={"model": alpha, "messages": [{"role": "user", "content": "hi"}], "stream": False},
        timeout=30,
    )
    assert native.status_code == 200, native.text
    # The stream went to r0 (alpha loaded there only) and was dropped; the native request may
    # go to r0 or to the replica that loaded alpha meanwhile: one retry per dropped attempt.
    dropped = httpx.get(replicas["r0"].url + "/_standin/stats").json()["faults_applied"] - dropped
    assert dropped >= 1
    assert metric(routing_gateway, "tollgate_routing_retries_total", pool=pool) == retries + dropped
    assert metric(routing_gateway, "tollgate_replica_up", pool=pool, replica="r0") == 1  # not yet
