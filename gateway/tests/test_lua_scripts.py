"""The limiter's Lua scripts (admit, settle, usage) in process, through the gateway's own
Redis pipe, against a real Valkey, and the month's spend seeded from a real Postgres."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from redis.asyncio import Redis

from tollgate_dev.servers.backing import LocalValkey
from tollgate_gateway.config import RedisFailurePolicy
from tollgate_gateway.errors import ApiError
from tollgate_gateway.keys.service import KeyRecord
from tollgate_gateway.limits.service import NOTHING, Ask, Limiter
from tollgate_gateway.usage.service import UsageService
from tollgate_schema.db import create_engine
from tollgate_schema.dsn import to_sqlalchemy_dsn


def key(**limits: Any) -> KeyRecord:
    values: dict[str, Any] = {
        "rate_limit_rpm": None,
        "tpm_limit": None,
        "concurrency_limit": None,
        "monthly_budget": None,
        **limits,
    }
    return KeyRecord(
        id=uuid.uuid4(),
        key_hash="h",
        name="lua",
        owner=None,
        app=None,
        allowed=None,
        expires_at=None,
        disabled=False,
        revoked=False,
        **values,
    )


@pytest.fixture
async def limiter(valkey: LocalValkey, migrated_dsn: str) -> AsyncIterator[Limiter]:
    redis = Redis.from_url(valkey.url, socket_timeout=2.0)
    engine = create_engine(to_sqlalchemy_dsn(migrated_dsn), pool_size=1)
    stream = f"test-lua-{uuid.uuid4().hex}"
    limiter = Limiter(
        redis, UsageService(engine), RedisFailurePolicy.OPEN, 30.0, usage_stream=stream
    )
    yield limiter
    await limiter.drain()
    await limiter.stop()
    await redis.delete(stream)
    await redis.aclose()
    await engine.dispose()


async def refused(limiter: Limiter, record: KeyRecord, ask: Ask = NOTHING) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await limiter.admit(record, "r", ask)
    assert caught.value.status == 429
    return caught.value


async def test_admit_counts_requests_in_a_sliding_minute(limiter: Limiter) -> None:
    record = key(rate_limit_rpm=2)
    first = await limiter.admit(record, "r1")
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    await limiter.admit(record, "r2")
    refusal = await refused(limiter, record)
    assert (refusal.code, refusal.type) == ("rate_limit_exceeded", "requests")
    assert int(refusal.headers["retry-after"]) >= 1


async def test_a_lease_holds_a_concurrency_slot_until_settled(limiter: Limiter) -> None:
    record = key(concurrency_limit=1)
    held = await limiter.admit(record, "r1")
    assert limiter.in_flight == 1
    assert (await refused(limiter, record)).code == "concurrency_limit_exceeded"
    limiter.settle(held, 0, Decimal(0))
    await limiter.drain()
    again = await limiter.admit(record, "r3")
    limiter.settle(again, 0, Decimal(0))
    await limiter.drain()


async def test_tokens_are_reserved_at_admission_and_charged_at_settlement(
    limiter: Limiter,
) -> None:
    record = key(tpm_limit=100)
    assert (await refused(limiter, record, Ask(prompt=150))).type == "tokens"
    admission = await limiter.admit(record, "r1", Ask(prompt=40, output=1000))
    assert admission.cap == 60  # what the key has left of its minute, sent upstream as a cap
    limiter.settle(admission, 90, Decimal(0))
    await limiter.drain()
    assert (await refused(limiter, record, Ask(prompt=20))).type == "tokens"
    small = await limiter.admit(record, "r2", Ask(prompt=5))
    limiter.settle(small, 5, Decimal(0))
    await limiter.drain()


async def test_the_budget_is_seeded_from_postgres_then_spent_in_redis(limiter: Limiter) -> None:
    record = key(monthly_budget=Decimal("0.000010"))
    per_token = 1000.0  # nano-units: 1e-6 per token
    first = await limiter.admit(record, "r1", Ask(prompt=4, output=100, output_nanos=per_token))
    assert first.cap == 10  # the budget allows ten output tokens at this price
    limiter.settle(first, 10, Decimal("0.000010"))
    await limiter.drain()
    refusal = await refused(limiter, record, Ask(prompt=1, output=1, output_nanos=per_token))
    assert (refusal.code, refusal.headers["x-should-retry"]) == ("insufficient_quota", "false")


async def test_settlement_appends_the_usage_row_in_the_same_script(limiter: Limiter) -> None:
    record = key(concurrency_limit=5)
    admission = await limiter.admit(record, "r1")
    limiter.settle(admission, 3, Decimal(0), usage="a usage line")
    await limiter.drain()
    plain = key()  # no limits: the row alone, through usage.lua
    limiter.settle(await limiter.admit(plain, "r2"), 3, Decimal(0), usage="another line")
    await limiter.drain()
    redis: Redis = limiter._redis
    entries = await redis.xrange(limiter._usage_stream)
    assert [fields[b"r"] for _, fields in entries] == [b"a usage line", b"another line"]


async def test_many_admissions_of_one_loop_turn_share_the_pipe(limiter: Limiter) -> None:
    record = key(rate_limit_rpm=1000)
    admissions = await asyncio.gather(*(limiter.admit(record, f"r{i}") for i in range(50)))
    remaining = sorted(int(a.headers["x-ratelimit-remaining-requests"]) for a in admissions)
    assert remaining == list(range(950, 1000))  # each saw the ones before it, none twice
