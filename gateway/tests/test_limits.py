"""Limits a tenant cannot sidestep: repeated request ids, long streams, disconnects, tokens."""

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

from tollgate_dev.gatewayproc import GatewayProcess, StandinProcess
from tollgate_dev.pytest_services import Admin, Gateways

SAME_ID = {"x-request-id": "same-id-every-time"}


@pytest.fixture(scope="module")
def slow_standin(service_dir: Path) -> Iterator[StandinProcess]:
    """A stand-in that streams 20 tokens per second, so requests overlap."""
    proc = StandinProcess(
        log_path=service_dir / "limits-slow-standin.log",
        extra=["--tokens-per-second", "20", "--parallel", "64", "--completion-tokens", "400"],
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def slow_model(admin: Admin, slow_standin: StandinProcess, gateway: GatewayProcess) -> str:
    admin.ensure_model(
        "slow-limits",
        "llama3:8b",
        backend_url=slow_standin.url,
        input_price_per_mtok="1000",
        output_price_per_mtok="1000",
    )
    key = admin.create_key()["key"]
    deadline = time.monotonic() + 10
    while httpx.get(gateway.url + "/v1/models/slow-limits", headers=auth(key)).status_code != 200:
        assert time.monotonic() < deadline, "the new alias never reached the gateway"
        time.sleep(0.1)
    return "slow-limits"


@pytest.fixture(scope="module")
def short_lease(gateways: Gateways) -> GatewayProcess:
    """A gateway whose concurrency leases last one second (renewed every third of it)."""
    return gateways.start(TOLLGATE_CONCURRENCY_LEASE_SECONDS="1")


def chat_body(model: str, stream: bool = False, max_tokens: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello"}],
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def auth(key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


async def burst(
    url: str, key: str, bodies: list[dict[str, Any]], headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    sent = auth(key, **(headers or {}))
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as http:
        return await asyncio.gather(
            *(http.post(url + "/v1/chat/completions", json=b, headers=sent) for b in bodies)
        )


def spent_by(dsn: str, key_id: str, expected_rows: int) -> tuple[int, Decimal, int]:
    """Usage rows, their cost and tokens for a key, once `expected_rows` have been written."""
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
        if row[0] >= expected_rows or time.monotonic() > deadline:
            return int(row[0]), Decimal(row[1]), int(row[2])
        time.sleep(0.1)


# -- the limiter's identities are ours ---------------------------------------------------


def test_repeated_request_id_does_not_bypass_rpm(
    gateway: GatewayProcess, admin: Admin, chat_model: str
) -> None:
    key = admin.create_key(rate_limit_rpm=3)["key"]
    statuses = []
    for _ in range(10):
        r = httpx.post(
            gateway.url + "/v1/chat/completions",
            json=chat_body(chat_model, max_tokens=1),
            headers=auth(key, **SAME_ID),
            timeout=30,
        )
        assert r.headers["x-request-id"] == SAME_ID["x-request-id"]  # still echoed
        statuses.append(r.status_code)
    assert statuses == [200] * 3 + [429] * 7


def test_repeated_request_id_does_not_bypass_concurrency(
    gateway: GatewayProcess, admin: Admin, slow_model: str, slow_standin: StandinProcess
) -> None:
    key = admin.create_key(concurrency_limit=2)["key"]
    httpx.post(slow_standin.url + "/_standin/reset").raise_for_status()
    bodies = [chat_body(slow_model, stream=True, max_tokens=20)] * 10
    responses = asyncio.run(burst(gateway.url, key, bodies, SAME_ID))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 2, statuses
    assert statuses.count(429) == 8
    stats = httpx.get(slow_standin.url + "/_standin/stats").json()
    assert stats["max_in_flight"] <= 2, stats


def test_repeated_request_id_does_not_bypass_the_budget(
    gateway: GatewayProcess, admin: Admin, slow_model: str, migrated_dsn: str
) -> None:
    budget = Decimal("0.5")  # 500 tokens at 1000 per million; one answer is about 55
    key = admin.create_key(monthly_budget=str(budget))
    bodies = [chat_body(slow_model, max_tokens=50)] * 30
    responses = asyncio.run(burst(gateway.url, key["key"], bodies, SAME_ID))
    statuses = [r.status_code for r in responses]
    assert 429 in statuses, statuses
    _, spent, _ = spent_by(migrated_dsn, key["id"], statuses.count(200))
    assert spent <= budget, (spent, statuses)
