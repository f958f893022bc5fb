"""The limiter's Lua scripts (admit, settle, usage) in process, through the gateway's own
Redis pipe, against a real Valkey, and the month's spend seeded from a real Postgres."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from tollgate_dev.servers.backing import LocalValkey
from tollgate_gateway.config import RedisFailurePolicy
from tollgate_gateway.errors import ApiError
from tollgate_gateway.keys.service import KeyRecord
from tollgate_gateway.limits.service import NOTHING, Ask, Limiter, Rider, Script
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


async def refused(
    limiter: Limiter, record: KeyRecord, ask: Ask = NOTHING, ride: Rider | None = None
) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await limiter.admit(record, "r", ask, ride)
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


# -- the scripts' sums, with the clock in the test's hands -------------------------------------
SCRIPTS = Path(__file__).resolve().parents[1] / "src" / "tollgate_gateway" / "limits"


class Scripts:
    """admit.lua and settle.lua called directly, with `now` chosen by the test."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        base = f"tg:{{test-{uuid.uuid4().hex}}}"
        self.keys = [f"{base}:{n}" for n in ("rpm", "tpm:3", "inflight", "resv:3", "spend")]
        self.admit_src = (SCRIPTS / "admit.lua").read_text()
        self.settle_src = (SCRIPTS / "settle.lua").read_text()
        self.stream = f"{base}:usage"

    async def admit(
        self,
        now: int,
        member: str,
        *,
        tpm: int = 0,
        budget: int = -1,
        conc: int = 0,
        prompt: int = 0,
        output: int = 0,
        lease: int = 30_000,
    ) -> list[Any]:
        args = [now, 0, tpm, conc, lease, member, budget, 0, 3600, prompt, output, 1, 1, 1]
        return cast(list[Any], await self.redis.eval(self.admit_src, 5, *self.keys, *args))

    async def settle(self, now: int, member: str, tokens: int, cost: int = 0) -> None:
        k = self.keys
        keys = [k[1], k[2], k[3], k[4], self.stream]
        args = [now, member, tokens, cost, 3600, 1, 1, ""]
        await self.redis.eval(self.settle_src, 5, *keys, *args)

    async def hash(self, index: int) -> dict[str, int]:
        """A hash's entries; of the token window, without "x" (when its expiry is next
        pushed back: see test_the_token_window_outlives_each_charge)."""
        raw = await self.redis.hgetall(self.keys[index])
        entries = {k.decode(): int(v) for k, v in raw.items()}
        if index == 1:
            entries.pop("x", None)
        return entries


@pytest.fixture
async def scripts(valkey: LocalValkey) -> AsyncIterator[Scripts]:
    redis = Redis.from_url(valkey.url)
    yield Scripts(redis)
    await redis.aclose()


async def test_tokens_leave_the_minute_bucket_by_bucket(scripts: Scripts) -> None:
    t0 = 1_800_000_000_000  # ms, on a second boundary
    await scripts.admit(t0, "a", tpm=10_000, prompt=10, output=90)
    await scripts.settle(t0 + 10, "a", 100)
    await scripts.admit(t0 + 30_000, "b", tpm=10_000, prompt=10, output=40)
    await scripts.settle(t0 + 30_000, "b", 50)
    seen = await scripts.admit(t0 + 59_999, "c", tpm=10_000, prompt=1, output=1)
    assert seen[0] == 0 and seen[3] == 150 + 2  # both charges, and c's own reservation
    assert seen[4] == 1001  # the reset: surely past when t0's bucket leaves, at 61 s
    await scripts.settle(t0 + 59_999, "c", 0)
    later = await scripts.admit(t0 + 61_000, "d", tpm=10_000, prompt=1, output=1)
    assert later[3] == 50 + 2  # t0's bucket left the window
    await scripts.settle(t0 + 61_000, "d", 0)
    tpm = await scripts.hash(1)
    assert tpm == {"s": 50, "lo": t0 // 1000 + 30, str(t0 // 1000 + 30): 50}
    gone = await scripts.admit(t0 + 200_000, "e", tpm=10_000, prompt=1, output=1)
    assert gone[3] == 2
    assert (await scripts.hash(1))["s"] == 0


async def test_a_settlement_from_a_clock_behind_still_leaves_the_window(scripts: Scripts) -> None:
    t0 = 1_800_000_000_000
    await scripts.settle(t0 + 5_000, "x", 70)  # the first bucket: t0 + 5 s
    await scripts.settle(t0, "y", 30)  # a gateway 5 s behind: charged to the oldest bucket
    assert await scripts.hash(1) == {"s": 100, "lo": t0 // 1000 + 5, str(t0 // 1000 + 5): 100}
    after = await scripts.admit(t0 + 65_000, "z", tpm=1_000, prompt=1, output=1)
    assert after[3] == 2  # all of it left together, nothing stuck in the sum


async def test_a_sum_from_another_shape_is_counted_afresh(scripts: Scripts) -> None:
    t0 = 1_800_000_000_000
    sec = t0 // 1000
    # "lo" far in the past (a clock that jumped): the buckets are visited once and recounted.
    await scripts.redis.hset(
        scripts.keys[1], mapping={"s": 999, "lo": 1, str(sec - 100): 500, str(sec - 10): 40}
    )
    seen = await scripts.admit(t0, "a", tpm=1_000, prompt=1, output=1)
    assert seen[3] == 40 + 2
    assert await scripts.hash(1) == {"s": 40, "lo": sec - 10, str(sec - 10): 40}


async def test_reservation_sums_follow_admissions_settlements_and_dead_leases(
    scripts: Scripts,
) -> None:
    t0 = 1_800_000_000_000
    for i in range(5):
        await scripts.admit(t0, f"m{i}", tpm=1_000_000, budget=10**12, prompt=10, output=20)
    held = await scripts.hash(3)  # nanos by member, tokens by "t:" + member; sums "#", "#t"
    assert held["#"] == 5 * 30  # 1 nano per token in and out
    assert held["#t"] == 5 * 30
    await scripts.settle(t0 + 1, "m0", 25, cost=25)
    await scripts.settle(t0 + 1, "m1", 25, cost=25)
    left = dict.fromkeys(("m2", "m3", "m4", "t:m2", "t:m3", "t:m4"), 30)
    assert await scripts.hash(3) == {"#": 90, "#t": 90, **left}
    # m2..m4 were never settled: their holder died, and the leases lapse after 30 s.
    seen = await scripts.admit(t0 + 30_001, "n", tpm=1_000_000, budget=10**12, prompt=1, output=1)
    assert seen[3] == 50 + 2  # what m0 and m1 used, and n's own reservation
    assert await scripts.hash(3) == {"#": 2, "#t": 2, "n": 2, "t:n": 2}


async def test_only_the_reservations_a_key_has_limits_for_are_kept(scripts: Scripts) -> None:
    t0 = 1_800_000_000_000
    await scripts.admit(t0, "b", budget=10**12, prompt=10, output=20)
    await scripts.admit(t0, "t", tpm=1_000_000, prompt=10, output=20)
    assert await scripts.hash(3) == {"#": 30, "b": 30, "#t": 30, "t:t": 30}
    await scripts.settle(t0 + 1, "b", 25, cost=25)
    await scripts.settle(t0 + 1, "t", 25)
    assert await scripts.hash(3) == {"#": 0, "#t": 0}


async def test_the_token_window_outlives_each_charge(scripts: Scripts) -> None:
    """Its expiry is pushed to 180 s at most once a minute (not on every charge): the window
    then lives at least 120 s past any charge, and a charge due to push it does."""
    t0 = int(time.time() * 1000)
    await scripts.settle(t0, "a", 10)
    first_due = int(await scripts.redis.hget(scripts.keys[1], "x") or 0)
    assert first_due == t0 + 60_000
    assert 179 <= await scripts.redis.ttl(scripts.keys[1]) <= 180
    await scripts.redis.expire(scripts.keys[1], 170)  # as if 10 s passed
    await scripts.settle(t0 + 10_000, "b", 10)  # not due: the expiry stays
    assert await scripts.redis.ttl(scripts.keys[1]) <= 170
    await scripts.redis.expire(scripts.keys[1], 121)  # 59 s after the push
    await scripts.settle(t0 + 60_000, "c", 10)  # due: pushed back again
    assert 179 <= await scripts.redis.ttl(scripts.keys[1]) <= 180
    assert int(await scripts.redis.hget(scripts.keys[1], "x") or 0) == t0 + 120_000


# -- riders: a second script in the same call (the pool queue's acquire and release) --------
ECHO = Script.of("redis.call('SET', KEYS[1], ARGV[1]) return {0, #KEYS, #ARGV, ARGV[1]}")
SAY = Script.of("redis.call('SET', KEYS[1], ARGV[1]) return {7, KEYS[1], ARGV[#ARGV]}")


@pytest.fixture
async def scratch(valkey: LocalValkey) -> AsyncIterator[tuple[Redis, str]]:
    """A Redis client and a key prefix of the test's own; its keys are deleted after."""
    redis = Redis.from_url(valkey.url)
    base = f"t:{uuid.uuid4().hex}"
    yield redis, base
    async for name in redis.scan_iter(match=f"{base}*"):
        await redis.delete(name)
    await redis.aclose()


async def test_a_composed_script_gives_each_part_only_its_own_keys_and_args(
    scratch: tuple[Redis, str],
) -> None:
    redis, base = scratch
    for gated in (True, False):
        both = ECHO.then(SAY, gated)
        keys = [f"{base}:a", f"{base}:b"]
        reply = await redis.eval(both.source, 2, *keys, 1, 1, "first", "second", "last")
        assert reply == [[0, 1, 1, b"first"], [7, keys[1].encode(), b"last"]]
        assert await redis.mget(keys) == [b"first", b"second"]
    refusing = SAY.then(ECHO, gated=True)  # the first part's code is 7: not admitted
    keys = [f"{base}:c", f"{base}:d"]
    reply = await redis.eval(refusing.source, 2, *keys, 1, 1, "x", "y")
    assert reply == [[7, keys[0].encode(), b"x"], None]
    assert await redis.get(keys[1]) is None  # the gated part never ran
    ungated = SAY.then(ECHO, gated=False)
    reply = await redis.eval(ungated.source, 2, *keys, 1, 1, "x", "y")
    assert reply[1] == [0, 1, 1, b"y"]


def rider(redis_key: str, value: str, sent: list[str]) -> Rider:
    ride = Rider(SAY, [redis_key], [value], lambda: sent.append(value))
    ride.reply = asyncio.get_running_loop().create_future()
    return ride


async def test_an_admission_carries_its_rider_only_when_it_admits(
    limiter: Limiter, scratch: tuple[Redis, str]
) -> None:
    redis, base = scratch
    sent: list[str] = []
    record = key(rate_limit_rpm=1)
    ride = rider(f"{base}:1", "granted", sent)
    await limiter.admit(record, "r1", NOTHING, ride)
    assert ride.reply is not None and await ride.reply == [7, f"{base}:1".encode(), b"granted"]
    refused_ride = rider(f"{base}:2", "refused", sent)
    await refused(limiter, record, NOTHING, refused_ride)
    assert refused_ride.reply is not None and await refused_ride.reply is None
    assert await redis.get(f"{base}:2") is None  # it did not run
    unlimited = rider(f"{base}:3", "alone", sent)
    await limiter.admit(key(), "r3", NOTHING, unlimited)
    assert sent == ["alone"]  # no admission script: the owner sends it by itself
    assert unlimited.reply is not None and not unlimited.reply.done()


async def test_a_settlement_carries_its_rider_with_the_usage_row(
    limiter: Limiter, scratch: tuple[Redis, str]
) -> None:
    redis, base = scratch
    sent: list[str] = []
    admission = await limiter.admit(key(concurrency_limit=1), "r1")
    limiter.settle(admission, 3, Decimal(0), "row\n", rider=rider(f"{base}:1", "released", sent))
    await limiter.drain()
    assert await redis.get(f"{base}:1") == b"released"
    assert sent == []
    # A settlement with nothing to write (no limits, no row) sends its rider alone.
    limiter.settle(await limiter.admit(key(), "r2"), 0, Decimal(0), rider=rider(base, "x", sent))
    assert sent == ["x"]
