"""Routing over two real Ollama v0.24 processes (``OLLAMA_MAX_LOADED_MODELS=1``), each with
two tiny models: what the gateway believes about them is what Ollama itself reports."""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tollgate_dev.plugins.ollama import RealOllamaPods
from tollgate_dev.plugins.services import Admin
from tollgate_dev.proc import free_port
from tollgate_dev.servers.programs import GatewayProcess
from tollgate_dev.servers.realollama import RealOllama

from .test_routing_replicas import client, metric, wait_until

NewKey = Callable[..., dict[str, Any]]
A, B = "tiny-a:latest", "tiny-b:latest"
SHORT: dict[str, Any] = {"max_tokens": 4, "temperature": 0}


@pytest.fixture
def pair(real_ollama_pods: RealOllamaPods) -> dict[str, RealOllama]:
    """Two real Ollamas (stopped by ``real_ollama_pods``), each with both tiny models."""
    env = {"OLLAMA_MAX_LOADED_MODELS": "1", "OLLAMA_KEEP_ALIVE": "10m"}
    servers = {
        name: real_ollama_pods.start("127.0.0.1", free_port("127.0.0.1"), env)
        for name in ("o0", "o1")
    }
    for server in servers.values():
        server.create_tiny(A, seed=0)
        server.create_tiny(B, seed=1)
    return servers


def load(server: RealOllama, model: str) -> None:
    httpx.post(
        server.url + "/api/generate",
        json={"model": model, "prompt": "hi", "stream": False, "options": {"num_predict": 1}},
        timeout=120,
    ).raise_for_status()


def loaded(server: RealOllama) -> set[str]:
    return {m["name"] for m in httpx.get(server.url + "/api/ps", timeout=10).json()["models"]}


def decisions(gateway: GatewayProcess, pool: str) -> dict[str, float]:
    return {
        r: metric(gateway, "tollgate_routing_decisions_total", pool=pool, replica=r)
        for r in ("o0", "o1")
    }


def went_to(gateway: GatewayProcess, pool: str, before: dict[str, float]) -> dict[str, float]:
    after = decisions(gateway, pool)
    return {r: after[r] - before[r] for r in after if after[r] - before[r]}


def aliases(admin: Admin, servers: dict[str, RealOllama], pool: str) -> tuple[str, str]:
    names = []
    for tag in (A, B):
        alias = f"real-{tag.split(':')[0]}-{secrets.token_hex(3)}"
        response = admin.http.post(
            "/admin/models",
            json={
                "alias": alias,
                "backend_tag": tag,
                "replicas": [{"name": n, "url": s.url} for n, s in servers.items()],
                "routing": {"pool": pool},
            },
        )
        assert response.status_code == 201, response.text
        names.append(alias)
    return names[0], names[1]


def test_two_real_ollamas_model_affinity_conversations_and_a_dead_replica(
    routing_gateway: GatewayProcess,
    admin: Admin,
    new_key: NewKey,
    pair: dict[str, RealOllama],
) -> None:
    load(pair["o0"], A)
    load(pair["o1"], B)
    assert (loaded(pair["o0"]), loaded(pair["o1"])) == ({A}, {B})
    pool = "real/" + secrets.token_hex(4)
    alias_a, alias_b = aliases(admin, pair, pool)
    c = client(routing_gateway, new_key()["key"])
    wait_until(
        "the gateway to read both Ollamas' /api/ps",
        lambda: (
            metric(routing_gateway, "tollgate_replica_model_loaded", pool=pool, replica="o0") == 1
            and metric(routing_gateway, "tollgate_replica_model_loaded", pool=pool, replica="o1")
            == 1
        ),
        timeout=30,
    )

    # Requests for A keep going to the Ollama that has A loaded, B's to B's: nothing swaps.
    before = decisions(routing_gateway, pool)
    for _ in range(5):
        c.chat.completions.create(
            model=alias_a, messages=[{"role": "user", "content": "hi"}], **SHORT
        )
    for _ in range(3):
        c.chat.completions.create(
            model=alias_b, messages=[{"role": "user", "content": "hi"}], **SHORT
        )
    assert went_to(routing_gateway, pool, before) == {"o0": 5, "o1": 3}
    assert (loaded(pair["o0"]), loaded(pair["o1"])) == ({A}, {B})

    # A conversation's second turn lands where its first did (each holds the model it needs).
    first = [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Name a colour."},
    ]
    before = decisions(routing_gateway, pool)
    answer = c.chat.completions.create(model=alias_b, messages=first, **SHORT)
    (home,) = went_to(routing_gateway, pool, before)
    second = [
        *first,
        {"role": "assistant", "content": answer.choices[0].message.content or ""},
        {"role": "user", "content": "Another one."},
    ]
    before = decisions(routing_gateway, pool)
    c.chat.completions.create(model=alias_b, messages=second, **SHORT)
    assert went_to(routing_gateway, pool, before) == {home: 1}

    # o0 dies: a request for A is refused there, retried on o1 (which loads A) and succeeds;
    # o0 is ejected and gets nothing more.
    pair["o0"].stop()
    retries = metric(routing_gateway, "tollgate_routing_retries_total", pool=pool, reason="connect")
    before = decisions(routing_gateway, pool)
    result = c.chat.completions.create(
        model=alias_a, messages=[{"role": "user", "content": "hi"}], **SHORT
    )
    assert result.choices[0].message.content is not None
    went = went_to(routing_gateway, pool, before)
    # Either the request met the refusal and was retried on o1, or a poll had already found
    # o0 gone (its stop takes a moment) and it went to o1 at once.
    assert went in ({"o0": 1, "o1": 1}, {"o1": 1}), went
    after = metric(routing_gateway, "tollgate_routing_retries_total", pool=pool, reason="connect")
    assert after == retries + went.get("o0", 0)
    wait_until(
        "o0 ejected",
        lambda: (
            metric(routing_gateway, "tollgate_replica_ejections_total", pool=pool, replica="o0")
            >= 1
        ),
    )
    before = decisions(routing_gateway, pool)
    for _ in range(3):
        c.chat.completions.create(
            model=alias_a, messages=[{"role": "user", "content": "hi"}], **SHORT
        )
    assert set(went_to(routing_gateway, pool, before)) == {"o1"}
    assert loaded(pair["o1"]) == {A}  # it swapped B for A, as OLLAMA_MAX_LOADED_MODELS=1 says
    wait_until(
        "the gateway to see the swap on o1",
        lambda: (
            metric(
                routing_gateway, "tollgate_replica_model_loaded", pool=pool, replica="o1", model=B
            )
            == 0
        ),
    )
    assert (
        metric(routing_gateway, "tollgate_model_loads_total", pool=pool, replica="o1", model=A) >= 1
    )


def test_real_ollama_dying_with_a_request_in_flight_before_its_first_byte(
    routing_gateway: GatewayProcess,
    admin: Admin,
    new_key: NewKey,
    pair: dict[str, RealOllama],
) -> None:
    """o0 has taken the request (the kernel accepted the connection and holds the bytes) but
    has not answered — it is stopped — when it dies: the gateway retries on o1, the client
    gets its answer, and the retry is counted as a reset before any response."""
    load(pair["o0"], A)
    load(pair["o1"], B)
    pool = "real/" + secrets.token_hex(4)
    alias_a, _ = aliases(admin, pair, pool)
    c = client(routing_gateway, new_key()["key"])
    wait_until(
        "the gateway to read o0's /api/ps",
        lambda: (
            metric(routing_gateway, "tollgate_replica_model_loaded", pool=pool, replica="o0") == 1
        ),
        timeout=30,
    )
    proc = pair["o0"].proc
    assert proc is not None
    reason = "reset_before_response"
    retries = metric(routing_gateway, "tollgate_routing_retries_total", pool=pool, reason=reason)
    before = decisions(routing_gateway, pool)
    result: dict[str, Any] = {}

    def ask() -> None:
        try:
            result["answer"] = c.chat.completions.create(
                model=alias_a, messages=[{"role": "user", "content": "hi"}], **SHORT
            )
        except Exception as exc:  # reported by the assertion below
            result["error"] = exc

    os.kill(proc.pid, signal.SIGSTOP)  # o0 still accepts connections, answers nothing
    try:
        asker = threading.Thread(target=ask)
        asker.start()
        wait_until("the request routed to o0", lambda: bool(went_to(routing_gateway, pool, before)))
        assert went_to(routing_gateway, pool, before) == {"o0": 1}
        time.sleep(0.3)  # the request's bytes are written into o0's socket
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # serve and its runner: the connection is reset
    asker.join(timeout=120)
    assert not asker.is_alive()
    assert "error" not in result, result
    assert result["answer"].choices[0].message.content is not None
    assert went_to(routing_gateway, pool, before) == {"o0": 1, "o1": 1}
    after = metric(routing_gateway, "tollgate_routing_retries_total", pool=pool, reason=reason)
    assert after == retries + 1
