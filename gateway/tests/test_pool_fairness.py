"""A full pool shared fairly: the gateways' queue in front of an Ollama stand-in.

The stand-in is the witness: its own in-flight maximum shows what reached the model server at
once, and its request log (the time each request *arrived*) shows the order the gateways let
requests through. Requests take about half a second there (100 ms to the first token, 16
tokens at 40 per second); the stand-in has more parallel slots than the pool declares, so
only the gateways' queue keeps the in-flight count at the pool's capacity.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tollgate_dev.plugins.services import Admin, Gateways
from tollgate_dev.servers.programs import GatewayProcess, StandinProcess

NewKey = Callable[..., dict[str, Any]]
CHAT = "/v1/chat/completions"
CAPACITY = 4


@pytest.fixture(scope="module")
def pool_standin(service_dir: Path) -> Iterator[StandinProcess]:
    proc = StandinProcess(
        models="tiny:latest",
        log_path=service_dir / "standin-pool.log",
        extra=[
            "--parallel",
            "16",
            "--ttft-ms",
            "100",
            "--tokens-per-second",
            "40",
            "--completion-tokens",
            "16",
            "--request-log-size",
            "1000",
        ],
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def pair(gateways: Gateways) -> tuple[GatewayProcess, GatewayProcess]:
    """Two gateway processes sharing Postgres and Redis (polling their queues often)."""
    env = {"TOLLGATE_QUEUE_POLL_SECONDS": "0.2"}
    return gateways.start(**env), gateways.start(**env)


@pytest.fixture(scope="module")
def watcher(pair: tuple[GatewayProcess, GatewayProcess]) -> Iterator[Admin]:
    """The admin API of the first of the pair (each gateway shows the queues it has seen)."""
    client = Admin(pair[0].url)
    yield client
    client.http.close()


def pool_alias(admin: Admin, standin: StandinProcess, **routing: Any) -> str:
    alias = "pooled-" + secrets.token_hex(3)
    body: dict[str, Any] = {
        "alias": alias,
        "backend_tag": "tiny",
        "backend_url": standin.url,
        "routing": {"pool": "test/" + secrets.token_hex(3), "slots": CAPACITY, **routing},
    }
    response = admin.http.post("/admin/models", json=body)
    assert response.status_code == 201, response.text
    return alias


def visible(key: str, alias: str, *gateways: GatewayProcess) -> None:
    """Until every gateway knows the new alias (the change feed told it)."""
    for gw in gateways:
        wait_until(
            f"{alias} on {gw.url}",
            lambda gw=gw: (
                httpx.get(
                    f"{gw.url}/v1/models/{alias}",
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=5,
                ).status_code
                == 200
            ),
        )


def stats(standin: StandinProcess) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(standin.url + "/_standin/stats", timeout=5).json()
    return data


def arrivals(standin: StandinProcess) -> list[tuple[float, str]]:
    """(arrival time, the prompt) of each request the stand-in answered, by arrival."""
    log = httpx.get(
        standin.url + "/_standin/requests", params={"path": CHAT, "limit": 1000}, timeout=5
    ).json()
    entries = log if isinstance(log, list) else log.get("requests", [])
    out = []
    for entry in entries:
        body = entry.get("body") or {}
        messages = body.get("messages") or [{}]
        out.append((float(entry["arrived"]), str(messages[-1].get("content"))))
    return sorted(out)


def chat(url: str, key: str, alias: str, prompt: str, stream: bool = False) -> httpx.Response:
    return httpx.post(
        url + CHAT,
        headers={"Authorization": f"Bearer {key}"},
        json={"model": alias, "messages": [{"role": "user", "content": prompt}], "stream": stream},
        timeout=120,
    )


async def flood(urls: list[str], key: str, alias: str, prompt: str, count: int) -> list[int]:
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def one(i: int) -> int:
            response = await client.post(
                urls[i % len(urls)] + CHAT,
                headers={"Authorization": f"Bearer {key}"},
                json={"model": alias, "messages": [{"role": "user", "content": prompt}]},
            )
            return response.status_code

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def in_background(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(target()), daemon=True)
    thread.start()
    return thread, result


def queue_of(admin: Admin, alias_pool: str | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = admin.http.get("/admin/pools/queue").json()
    return [r for r in rows if alias_pool is None or r["pool"] == alias_pool]


def wait_until(what: str, probe: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def pool_of(admin: Admin, alias: str) -> str:
    for model in admin.http.get("/admin/models").json():
        if model["alias"] == alias:
            return str(model["routing"]["pool"])
    raise AssertionError(alias)


def test_two_gateways_keep_the_pool_at_capacity_and_a_lone_request_skips_the_flood(
    pair: tuple[GatewayProcess, GatewayProcess],
    watcher: Admin,
    admin: Admin,
    new_key: NewKey,
    pool_standin: StandinProcess,
) -> None:
    one, two = pair
    alias = pool_alias(admin, pool_standin)
    pool = pool_of(admin, alias)
    # A's key has limits, so its acquires ride on its admission script; B's has none, so
    # its acquire goes alone: both paths share the one queue.
    a = new_key(rate_limit_rpm=1_000_000, concurrency_limit=1_000)["key"]
    b = new_key()["key"]
    visible(a, alias, one, two)
    assert chat(two.url, b, alias, "warm").status_code == 200  # B's key is known there now
    httpx.post(pool_standin.url + "/_standin/reset", timeout=5).raise_for_status()
    flooding, codes = in_background(
        lambda: asyncio.run(flood([one.url, two.url], a, alias, "from A", 100))
    )
    wait_until(  # the flood is queued in both gateways
        "A's requests to queue",
        lambda: sum(r["waiting"] for r in queue_of(watcher, pool)) >= 80,
    )
    sent = time.time()
    lone = chat(two.url, b, alias, "from B")
    assert lone.status_code == 200, lone.text
    assert int(lone.headers["x-tollgate-queue-ms"]) > 0  # it did wait (the pool was full)
    flooding.join(120)
    assert codes == [[200] * 100]  # nothing lost
    witnessed = stats(pool_standin)
    # The stand-in could run 16 at once: the gateways together never let more than 4 through.
    assert witnessed["max_in_flight"] == CAPACITY, witnessed
    assert witnessed["max_queued"] == 0, witnessed  # and nothing waited in Ollama's own queue
    order = arrivals(pool_standin)
    b_at = next(at for at, prompt in order if prompt == "from B")
    # B joined the queue when its wait began: its grant (a moment before it reached the
    # stand-in) less the time it waited, by the gateway's own account.
    joined = b_at - int(lone.headers["x-tollgate-queue-ms"]) / 1000
    ahead = [at for at, prompt in order if prompt == "from A" and joined < at < b_at]
    # Once queued, B waited behind at most one turn of A's queue (FIFO would put ~90 of A's
    # first). Slots that come free together are granted in one order, B first, but A's
    # granted in the same instant may reach the stand-in before B's grant has crossed its
    # gateway (a grant is a message to the waiting request's process): fewer than one turn.
    assert len(ahead) < CAPACITY, (len(ahead), len(order))
    # Before it joined, while B's request crossed the gateway, at most the slots that came
    # free meanwhile went to A: one turn of the pool.
    on_the_way = [at for at, prompt in order if prompt == "from A" and sent < at <= joined]
    assert len(on_the_way) <= CAPACITY, (len(on_the_way), len(order))


def test_a_batch_key_yields_to_an_interactive_key(
    pair: tuple[GatewayProcess, GatewayProcess],
    watcher: Admin,
    admin: Admin,
    new_key: NewKey,
    pool_standin: StandinProcess,
) -> None:
    one, two = pair
    alias = pool_alias(admin, pool_standin)
    pool = pool_of(admin, alias)
    batch = new_key(priority="batch")["key"]
    interactive = new_key(priority="interactive")["key"]
    visible(batch, alias, one, two)
    httpx.post(pool_standin.url + "/_standin/reset", timeout=5).raise_for_status()
    batching, batch_codes = in_background(
        lambda: asyncio.run(flood([one.url], batch, alias, "batch", 40))
    )
    wait_until(
        "the batch key to queue", lambda: sum(r["waiting"] for r in queue_of(watcher, pool)) >= 30
    )
    started = time.time()
    urgent, urgent_codes = in_background(
        lambda: asyncio.run(flood([two.url], interactive, alias, "interactive", 16))
    )
    urgent.join(120)
    batching.join(120)
    assert batch_codes == [[200] * 40]
    assert urgent_codes == [[200] * 16]
    later = [prompt for at, prompt in arrivals(pool_standin) if at > started]
    # Weight 8 against 1: of the first 18 let through after the interactive key came, at
    # least 14 are its own (FIFO: none until the batch queue is empty).
    assert later[:18].count("interactive") >= 14, later[:18]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, {"messages": [{"role": "user", "content": "late"}]}),
        ("/api/chat", {"messages": [{"role": "user", "content": "late"}], "stream": False}),
        ("/v1/messages", {"max_tokens": 8, "messages": [{"role": "user", "content": "late"}]}),
    ],
)
def test_past_its_deadline_a_request_gets_pool_busy_with_retry_after_in_its_api_shape(
    gateway: GatewayProcess,
    admin: Admin,
    new_key: NewKey,
    pool_standin: StandinProcess,
    migrated_dsn: str,
    path: str,
    body: dict[str, Any],
) -> None:
    alias = pool_alias(admin, pool_standin, slots=1, max_wait_seconds=0.5)
    key = new_key()
    visible(key["key"], alias, gateway)
    httpx.post(  # the holder's answer takes 2 s
        pool_standin.url + "/_standin/faults",
        json={"kind": "delay", "path": CHAT, "delay_ms": 2000, "times": 1},
        timeout=5,
    ).raise_for_status()
    holder, _ = in_background(lambda: chat(gateway.url, key["key"], alias, "holder"))
    wait_until(
        "the slot to be taken",
        lambda: any(r["in_flight"] >= 1 for r in queue_of(admin, pool_of(admin, alias))),
    )
    late = httpx.post(
        gateway.url + path,
        headers={"Authorization": f"Bearer {key['key']}"},
        json={"model": alias, **body},
        timeout=30,
    )
    holder.join(30)
    assert late.status_code == 503, late.text
    assert int(late.headers["retry-after"]) >= 1
    assert int(late.headers["x-tollgate-queue-ms"]) >= 500
    error = late.json()
    if path == CHAT:
        assert error["error"]["code"] == "pool_busy"
    elif path == "/api/chat":
        assert "busy" in error["error"]  # Ollama's shape: {"error": "<message>"}
    else:
        assert error["type"] == "error"
        assert error["error"]["type"] == "overloaded_error"
    deadline = time.monotonic() + 15
    rows: list[Any] = []
    while time.monotonic() < deadline:
        with psycopg.connect(migrated_dsn) as conn:
            rows = conn.execute(
                "SELECT status, error_class, prompt_tokens FROM usage_events "
                "WHERE key_id = %s AND status = 503",
                (key["id"],),
            ).fetchall()
        if rows:
            break
        time.sleep(0.1)
    assert rows == [(503, "pool_busy", 0)]


def test_a_client_that_leaves_while_queued_never_reaches_the_model_server(
    gateway: GatewayProcess, admin: Admin, new_key: NewKey, pool_standin: StandinProcess
) -> None:
    alias = pool_alias(admin, pool_standin, slots=1)
    pool = pool_of(admin, alias)
    key = new_key()["key"]
    visible(key, alias, gateway)
    httpx.post(
        pool_standin.url + "/_standin/faults",
        json={"kind": "delay", "path": CHAT, "delay_ms": 1500, "times": 1},
        timeout=5,
    ).raise_for_status()
    holder, _ = in_background(lambda: chat(gateway.url, key, alias, "holder"))
    wait_until(
        "the slot to be taken", lambda: any(r["in_flight"] >= 1 for r in queue_of(admin, pool))
    )
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            gateway.url + CHAT,
            headers={"Authorization": f"Bearer {key}"},
            json={"model": alias, "messages": [{"role": "user", "content": "gone"}]},
            timeout=httpx.Timeout(10, read=0.5),
        )
    wait_until(
        "the place to be given up", lambda: all(r["waiting"] == 0 for r in queue_of(admin, pool))
    )
    holder.join(30)
    # The slot is free again: a later request is served at once, and the one that left
    # never arrived at the stand-in.
    assert chat(gateway.url, key, alias, "after").status_code == 200
    prompts = [prompt for _, prompt in arrivals(pool_standin)]
    assert "after" in prompts
    assert "gone" not in prompts


def test_a_pool_at_zero_holds_requests_until_a_replica_is_ready(
    gateway: GatewayProcess, admin: Admin, new_key: NewKey, pool_standin: StandinProcess
) -> None:
    pool = "test/" + secrets.token_hex(3)
    alias = "cold-" + secrets.token_hex(3)
    created = admin.http.post(
        "/admin/models",
        json={
            "alias": alias,
            "backend_tag": "tiny",
            "replicas": [],
            "routing": {"pool": pool, "slots": 2, "cold_start_seconds": 20},
        },
    )
    assert created.status_code == 201, created.text
    key = new_key()["key"]
    visible(key, alias, gateway)
    held, answer = in_background(lambda: chat(gateway.url, key, alias, "held", stream=True))
    wait_until(
        "the request to be held", lambda: any(r["waiting"] == 1 for r in queue_of(admin, pool))
    )
    # The pool scaled up: its replica is listed (what the operator writes once it is ready).
    patched = admin.http.patch(
        f"/admin/models/{created.json()['id']}",
        json={"replicas": [{"name": "r0", "url": pool_standin.url}]},
    )
    assert patched.status_code == 200, patched.text
    held.join(30)
    response = answer[0]
    assert response.status_code == 200, response.text
    assert "data: [DONE]" in response.text
    assert int(response.headers["x-tollgate-queue-ms"]) > 0


def test_a_pool_at_zero_answers_pool_busy_after_its_cold_start_time(
    gateway: GatewayProcess, admin: Admin, new_key: NewKey
) -> None:
    alias = "cold-" + secrets.token_hex(3)
    created = admin.http.post(
        "/admin/models",
        json={
            "alias": alias,
            "backend_tag": "tiny",
            "replicas": [],
            "routing": {
                "pool": "test/" + secrets.token_hex(3),
                "slots": 1,
                "cold_start_seconds": 1,
            },
        },
    )
    assert created.status_code == 201, created.text
    key = new_key()["key"]
    visible(key, alias, gateway)
    refused = chat(gateway.url, key, alias, "cold")
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "pool_busy"
    assert int(refused.headers["retry-after"]) >= 1


@pytest.fixture(scope="module")
def eager(gateways: Gateways) -> GatewayProcess:
    """A gateway that tells waiting streams early (every 0.3 s)."""
    return gateways.start(TOLLGATE_QUEUE_KEEPALIVE_SECONDS="0.3", TOLLGATE_QUEUE_POLL_SECONDS="0.2")


def slot_taken(gateway: GatewayProcess, admin: Admin, alias: str, taken: bool = True) -> None:
    """Wait until the alias's pool has a request in flight (`taken`), or none."""
    watch = Admin(gateway.url)
    try:
        wait_until(
            "the slot to be taken" if taken else "the slot to be free",
            lambda: (
                any(r["in_flight"] >= 1 for r in queue_of(watch, pool_of(admin, alias))) is taken
            ),
        )
    finally:
        watch.http.close()


def test_a_waiting_stream_gets_sse_comments_then_its_answer_or_the_refusal_as_an_event(
    eager: GatewayProcess, admin: Admin, new_key: NewKey, pool_standin: StandinProcess
) -> None:
    alias = pool_alias(admin, pool_standin, slots=1, max_wait_seconds=2.5)
    key = new_key()["key"]
    visible(key, alias, eager)
    httpx.post(
        pool_standin.url + "/_standin/faults",
        json={"kind": "delay", "path": CHAT, "delay_ms": 900, "times": 1},
        timeout=5,
    ).raise_for_status()
    holder, _ = in_background(lambda: chat(eager.url, key, alias, "holder"))
    slot_taken(eager, admin, alias)
    served = chat(eager.url, key, alias, "patient", stream=True)  # waits ~1.4 s, then served
    assert served.status_code == 200
    lines = served.text.split("\n\n")
    assert lines[0] == ": queued"  # sent before the slot was free
    data = [line for line in lines if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]"
    holder.join(30)
    slot_taken(eager, admin, alias, taken=False)  # both released
    # Now one holds the slot for longer than the other may wait: the refusal comes in-stream.
    httpx.post(
        pool_standin.url + "/_standin/faults",
        json={"kind": "delay", "path": CHAT, "delay_ms": 3000, "times": 1},
        timeout=5,
    ).raise_for_status()
    holder, _ = in_background(lambda: chat(eager.url, key, alias, "holder"))
    slot_taken(eager, admin, alias)  # (a fixed pause let "too late" go first under load)
    refused = chat(eager.url, key, alias, "too late", stream=True)
    holder.join(30)
    assert refused.status_code == 200  # the stream had begun
    assert refused.text.startswith(": queued\n\n")
    last = refused.text.strip().split("\n\n")[-1]
    assert last.startswith("data: ")
    assert '"code":"pool_busy"' in last
    assert "too late" not in [prompt for _, prompt in arrivals(pool_standin)]
