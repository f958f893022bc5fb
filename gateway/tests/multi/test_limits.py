"""Limits across three gateway processes sharing one Valkey and one PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tollgate_dev.plugins.services import Admin, Gateways
from tollgate_dev.servers.backing import LocalValkey
from tollgate_dev.servers.programs import GatewayProcess, StandinProcess

pytestmark = pytest.mark.multi
LEASE = "3"


@pytest.fixture(scope="module")
def trio(gateways: Gateways) -> list[GatewayProcess]:
    return [gateways.start(TOLLGATE_CONCURRENCY_LEASE_SECONDS=LEASE) for _ in range(3)]


@pytest.fixture(scope="module")
def slow_standin(service_dir: Path) -> Iterator[StandinProcess]:
    """A stand-in that streams 20 tokens per second, so requests overlap."""
    proc = StandinProcess(
        log_path=service_dir / "slow-standin.log",
        extra=["--tokens-per-second", "20", "--parallel", "64", "--completion-tokens", "400"],
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def slow_model(admin: Admin, slow_standin: StandinProcess) -> str:
    admin.ensure_model(
        "slow-llm",
        "llama3:8b",
        backend_url=slow_standin.url,
        input_price_per_mtok="1000",
        output_price_per_mtok="1000",
    )
    return "slow-llm"


def chat_body(model: str, stream: bool = False, max_tokens: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello"}],
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def mixed_id(i: int) -> dict[str, str]:
    """Every other request repeats one x-request-id; the rest bring their own."""
    return {"x-request-id": "repeated-id" if i % 2 else f"distinct-{i}"}


async def burst(
    gateways: list[GatewayProcess], key: str, bodies: list[dict[str, Any]]
) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=500)) as http:
        return await asyncio.gather(
            *(
                http.post(
                    gateways[i % len(gateways)].url + "/v1/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {key}", **mixed_id(i)},
                )
                for i, body in enumerate(bodies)
            )
        )


def usage_of(dsn: str, key_id: str, rows: int) -> tuple[int, Decimal, int]:
    """(rows, cost, tokens) of a key's usage, once `rows` rows have been written."""
    deadline = time.monotonic() + 15
    while True:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT count(*), coalesce(sum(cost), 0), "
                "coalesce(sum(prompt_tokens + completion_tokens), 0) "
                "FROM usage_events WHERE key_id = %s",
                (key_id,),
            ).fetchone()
        assert row is not None
        if row[0] >= rows or time.monotonic() > deadline:
            return int(row[0]), Decimal(row[1]), int(row[2])
        time.sleep(0.1)


def test_rpm_burst_admits_exactly_the_limit(
    trio: list[GatewayProcess], admin: Admin, chat_model: str
) -> None:
    limit = 10
    key = admin.create_key(rate_limit_rpm=limit)["key"]
    responses = asyncio.run(burst(trio, key, [chat_body(chat_model)] * (3 * limit)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == limit, statuses
    assert statuses.count(429) == 2 * limit
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.json()["error"]["type"] == "requests"
    assert int(refused.headers["retry-after"]) >= 1
    assert int(refused.headers["retry-after-ms"]) > 0
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    ok = next(r for r in responses if r.status_code == 200)
    assert ok.headers["x-ratelimit-limit-requests"] == str(limit)
    assert int(ok.headers["x-ratelimit-remaining-requests"]) < limit


def test_concurrency_never_exceeded_at_the_upstream(
    trio: list[GatewayProcess], admin: Admin, slow_model: str, slow_standin: StandinProcess
) -> None:
    limit = 2
    key = admin.create_key(concurrency_limit=limit)["key"]
    httpx.post(slow_standin.url + "/_standin/reset").raise_for_status()
    responses = asyncio.run(burst(trio, key, [chat_body(slow_model, max_tokens=10)] * 12))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) >= limit
    refused = [r for r in responses if r.status_code == 429]
    assert refused, "a burst of 12 with concurrency 2 must see refusals"
    assert refused[0].json()["error"]["code"] == "concurrency_limit_exceeded"
    stats = httpx.get(slow_standin.url + "/_standin/stats").json()
    assert 1 <= stats["max_in_flight"] <= limit, stats


def test_tpm_burst_stays_within_the_limit(
    trio: list[GatewayProcess], admin: Admin, chat_model: str, migrated_dsn: str
) -> None:
    limit = 200
    key = admin.create_key(tpm_limit=limit)
    responses = asyncio.run(burst(trio, key["key"], [chat_body(chat_model)] * 60))
    statuses = [r.status_code for r in responses]
    assert 200 in statuses and 429 in statuses, statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["type"] == "tokens"
    _, _, tokens = usage_of(migrated_dsn, key["id"], statuses.count(200))
    assert 0 < tokens <= limit, (tokens, statuses)


def test_budget_is_never_exceeded(
    trio: list[GatewayProcess], admin: Admin, slow_model: str, migrated_dsn: str
) -> None:
    # 1000 per million tokens: a 10-token answer to a short prompt costs about 0.02.
    budget = Decimal("0.05")
    key = admin.create_key(monthly_budget=str(budget))
    responses = asyncio.run(burst(trio, key["key"], [chat_body(slow_model, max_tokens=10)] * 30))
    statuses = [r.status_code for r in responses]
    assert 200 in statuses and 429 in statuses, statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert refused.headers["x-should-retry"] == "false"
    # Reservations exceed real costs, so a little budget may be left: spend it, then the
    # refusal must hold on every replica.
    headers = {"Authorization": f"Bearer {key['key']}"}
    admitted = statuses.count(200)
    for i in range(100):
        r = httpx.post(
            trio[i % 3].url + "/v1/chat/completions",
            headers=headers,
            timeout=30,
            json=chat_body(slow_model, max_tokens=10),
        )
        if r.status_code == 429:
            break
        admitted += 1
    for gw in trio:
        again = httpx.post(
            gw.url + "/v1/chat/completions",
            headers=headers,
            timeout=30,
            json=chat_body(slow_model, max_tokens=1),
        )
        assert again.status_code == 429
    deadline = time.monotonic() + 15
    while True:
        with psycopg.connect(migrated_dsn) as conn:
            row = conn.execute(
                "SELECT count(*), coalesce(sum(cost), 0) FROM usage_events "
                "WHERE key_id = %s AND status = 200",
                (key["id"],),
            ).fetchone()
        assert row is not None
        if row[0] == admitted or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    spent = Decimal(row[1])
    assert Decimal(admin.http.get(f"/admin/keys/{key['id']}/budget").json()["spent"]) == spent
    # the documented bound: prompts no larger than their estimate never overspend
    assert spent <= budget, (spent, budget)


def test_revocation_reaches_every_replica_within_a_second(
    trio: list[GatewayProcess], admin: Admin, chat_model: str
) -> None:
    key = admin.create_key()
    headers = {"Authorization": f"Bearer {key['key']}"}
    for gw in trio:  # every replica has the key cached
        assert httpx.get(gw.url + "/v1/models", headers=headers).status_code == 200
    first = Admin(trio[0].url)
    assert first.http.delete(f"/admin/keys/{key['id']}").status_code == 204
    revoked_at = time.monotonic()
    pending = set(range(3))
    while pending and time.monotonic() - revoked_at < 1.0:
        for i in list(pending):
            if httpx.get(trio[i].url + "/v1/models", headers=headers).status_code == 401:
                pending.discard(i)
    assert not pending, f"replicas {pending} still accepted the revoked key after 1 s"


def test_killed_gateway_frees_its_concurrency_slot(
    gateways: Gateways, trio: list[GatewayProcess], admin: Admin, slow_model: str
) -> None:
    victim = gateways.start(TOLLGATE_CONCURRENCY_LEASE_SECONDS=LEASE)
    key = admin.create_key(concurrency_limit=1)["key"]
    headers = {"Authorization": f"Bearer {key}"}
    body = chat_body(slow_model, stream=True, max_tokens=2000)
    with httpx.stream(
        "POST", victim.url + "/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()  # kept alive: dropping it would close the stream
        assert next(lines).startswith("data:")
        blocked = httpx.post(
            trio[0].url + "/v1/chat/completions",
            json=chat_body(slow_model, max_tokens=1),
            headers=headers,
            timeout=30,
        )
        assert blocked.status_code == 429
        victim.kill()
    deadline = time.monotonic() + float(LEASE) + 5
    while True:
        retry = httpx.post(
            trio[0].url + "/v1/chat/completions",
            json=chat_body(slow_model, max_tokens=1),
            headers=headers,
            timeout=30,
        )
        if retry.status_code == 200:
            break
        assert time.monotonic() < deadline, "slot of the killed gateway was never freed"
        time.sleep(0.2)


def test_redis_outage_follows_the_open_policy_and_recovers(
    gateways: Gateways, admin: Admin, chat_model: str, service_dir: Path
) -> None:
    redis = LocalValkey(service_dir / "outage-valkey")
    redis.start()
    port = redis.port
    try:
        gw = gateways.start(REDIS_URL=redis.url, TOLLGATE_REDIS_FAILURE_POLICY="open")
        limited = admin.create_key(rate_limit_rpm=2)
        revoked = admin.create_key()
        url = gw.url + "/v1/chat/completions"

        def post(key: str) -> int:
            return httpx.post(
                url,
                json=chat_body(chat_model, max_tokens=1),
                timeout=30,
                headers={"Authorization": f"Bearer {key}"},
            ).status_code

        assert [post(limited["key"]) for _ in range(3)] == [200, 200, 429]
        redis.kill()
        # open policy: limited keys are served, never a 5xx, while Redis is gone
        assert [post(limited["key"]) for _ in range(5)] == [200] * 5
        assert admin.http.delete(f"/admin/keys/{revoked['id']}").status_code == 204
        deadline = time.monotonic() + 5
        while post(revoked["key"]) != 401:
            assert time.monotonic() < deadline, "revoked key accepted while Redis is down"
            time.sleep(0.05)
        redis = LocalValkey(service_dir / "outage-valkey", port=port)
        redis.start()
        fresh = admin.create_key(rate_limit_rpm=1)
        deadline = time.monotonic() + 15
        while True:  # recovers by itself: limits enforced again
            codes = [post(fresh["key"]) for _ in range(2)]
            if codes == [200, 429] or (codes == [429, 429]):
                break
            assert time.monotonic() < deadline, f"limits not enforced after Redis returned: {codes}"
            time.sleep(0.2)
    finally:
        redis.stop()


def test_redis_outage_closed_policy_refuses_limited_keys_with_503(
    gateways: Gateways, admin: Admin, chat_model: str, service_dir: Path
) -> None:
    redis = LocalValkey(service_dir / "closed-valkey")
    redis.start()
    gw = gateways.start(REDIS_URL=redis.url, TOLLGATE_REDIS_FAILURE_POLICY="closed")
    limited = admin.create_key(rate_limit_rpm=100)["key"]
    unlimited = admin.create_key()["key"]
    redis.kill()
    url = gw.url + "/v1/chat/completions"
    refused = httpx.post(
        url,
        json=chat_body(chat_model, max_tokens=1),
        headers={"Authorization": f"Bearer {limited}"},
        timeout=30,
    )
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "limits_unavailable"
    served = httpx.post(
        url,
        json=chat_body(chat_model, max_tokens=1),
        headers={"Authorization": f"Bearer {unlimited}"},
        timeout=30,
    )
    assert served.status_code == 200
