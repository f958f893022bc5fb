"""The pool queue (pools/, pool.lua) in process against a real Valkey: two `PoolQueue`s play
two gateway processes sharing one Redis. What is granted, in which order, and what is left
in Redis are read from the queues and from Redis itself."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from tollgate_dev.servers.backing import LocalValkey
from tollgate_gateway.catalog.service import Alias
from tollgate_gateway.errors import ApiError
from tollgate_gateway.fairqueue.config import QueueConfig
from tollgate_gateway.keys.service import KeyRecord
from tollgate_gateway.limits.service import ScriptClient
from tollgate_gateway.pools.service import Hold, PoolQueue
from tollgate_gateway.routing.model import Target


def key(priority: str | float | None = None, app: str | None = None) -> KeyRecord:
    return KeyRecord(
        id=uuid.uuid4(),
        key_hash="h",
        name="pool",
        owner=None,
        app=app,
        allowed=None,
        rate_limit_rpm=None,
        tpm_limit=None,
        concurrency_limit=None,
        monthly_budget=None,
        expires_at=None,
        disabled=False,
        revoked=False,
        priority=priority,
    )


def alias(pool: str, slots: int, replicas: int | None = None, **queue: Any) -> Alias:
    targets = None
    if replicas is not None:
        targets = tuple(Target(f"r{i}", f"http://127.0.0.1:{9 + i}") for i in range(replicas))
    return Alias(
        alias="a-" + pool,
        backend_tag="tiny",
        backend_url="http://127.0.0.1:9",
        enabled=True,
        input_price_per_mtok=Decimal(0),
        output_price_per_mtok=Decimal(0),
        created=int(datetime.now(UTC).timestamp()),
        replicas=targets,
        pool=pool,
        queue=QueueConfig(slots=slots, **queue),
    )


class Catalog:
    """The aliases the queues read their capacity from (what the change feed would update)."""

    def __init__(self) -> None:
        self.aliases: dict[str, Alias] = {}

    def put(self, value: Alias) -> Alias:
        self.aliases[value.alias] = value
        return value

    async def get(self, name: str) -> Alias | None:
        return self.aliases.get(name)


@pytest.fixture
async def redis(valkey: LocalValkey) -> AsyncIterator[Redis]:
    client = Redis.from_url(valkey.url, socket_timeout=2.0)
    yield client
    await client.aclose()


@pytest.fixture
def catalog() -> Catalog:
    return Catalog()


@pytest.fixture
async def gateways(redis: Redis, catalog: Catalog) -> AsyncIterator[list[PoolQueue]]:
    queues = []
    for _ in range(2):
        queue = PoolQueue(
            redis,
            ScriptClient(redis, 2.0),
            catalog.get,
            max_wait_seconds=5.0,
            max_waiting=50,
            poll_seconds=0.2,
        )
        queue.start()
        queues.append(queue)
    await asyncio.sleep(0.2)  # the grant channels are subscribed
    yield queues
    for queue in queues:
        await queue.stop()


def new_pool() -> str:
    return "test/" + secrets.token_hex(4)


async def take(queue: PoolQueue, target: Alias, who: KeyRecord) -> Hold:
    hold = queue.begin(target, who)
    assert hold is not None
    await queue.wait(hold, target)
    return hold


async def test_two_gateways_never_hold_more_than_the_capacity_and_a_release_wakes_the_other(
    gateways: list[PoolQueue], catalog: Catalog, redis: Redis
) -> None:
    first, second = gateways
    target = catalog.put(alias(new_pool(), slots=2, replicas=1))
    a, b = key(), key()
    held = [await take(first, target, a), await take(first, target, a)]
    waiting = asyncio.ensure_future(take(second, target, b))
    await asyncio.sleep(0.5)
    assert not waiting.done()  # the pool is full: the other gateway's request waits
    running = await redis.zcard(f"tg:pool:{{{target.pool}|tiny:latest}}:run")
    assert running == 2
    first.release(held[0])
    hold = await asyncio.wait_for(waiting, 5)  # granted by the other gateway's release
    assert hold.waited
    assert await redis.zcard(f"tg:pool:{{{target.pool}|tiny:latest}}:run") == 2
    first.release(held[1])
    second.release(hold)
    await asyncio.sleep(0.1)
    assert await redis.zcard(f"tg:pool:{{{target.pool}|tiny:latest}}:run") == 0


async def test_slots_of_a_gateway_that_died_go_to_the_living_once_their_leases_lapse(
    redis: Redis, catalog: Catalog
) -> None:
    target = catalog.put(alias(new_pool(), slots=2, replicas=1))
    run = f"tg:pool:{{{target.pool}|tiny:latest}}:run"

    def gateway(lease: float) -> PoolQueue:
        queue = PoolQueue(
            redis, ScriptClient(redis, 2.0), catalog.get, max_wait_seconds=10.0,
            lease_seconds=lease, poll_seconds=0.2,
        )  # fmt: skip
        queue.start()
        return queue

    dying, living = gateway(lease=1.0), gateway(lease=15.0)
    try:
        await asyncio.sleep(0.2)
        for _ in range(2):
            await take(dying, target, key())
        await dying.stop()  # killed: it never releases nor renews again
        started = asyncio.get_running_loop().time()
        # Both requests find the pool full of the dead gateway's holds: the first waits, and
        # the second arrives while someone waits; both are granted once the leases lapse.
        first = asyncio.ensure_future(take(living, target, key()))
        await asyncio.sleep(0.1)
        second = asyncio.ensure_future(take(living, target, key()))
        holds = await asyncio.wait_for(asyncio.gather(first, second), 8)
        assert asyncio.get_running_loop().time() - started >= 0.5  # not before they lapsed
        assert all(h.waited for h in holds)
        members = {m.decode() for m in await redis.zrange(run, 0, -1)}
        assert members == {h.member for h in holds}  # the dead holds are gone
        for hold in holds:
            living.release(hold)
        await asyncio.sleep(0.1)
        assert await redis.zcard(run) == 0
        # With the pool free again, a request is granted at once (the fast path).
        quick = await take(living, target, key())
        assert not quick.waited
        living.release(quick)
    finally:
        await living.stop()


async def test_a_cancellation_is_never_swallowed_by_the_demand_write(
    redis: Redis, catalog: Catalog
) -> None:
    """redis-py's pipeline may return normally when cancelled mid-write: a poll loop told to
    stop then went on renewing a stopped gateway's leases, and a client that left while its
    pool's demand was written stayed queued."""
    target = catalog.put(alias(new_pool(), slots=1, replicas=1))
    queue = PoolQueue(redis, ScriptClient(redis, 2.0), catalog.get, poll_seconds=100)
    hold = await take(queue, target, key())  # a poll now renews it and writes the demand
    loop = asyncio.get_running_loop()
    times = []
    for _ in range(5):
        started = loop.time()
        await queue.tick()
        times.append(loop.time() - started)
    took = sorted(times)[2]  # cancel at points spread over one poll, on any machine
    landed = 0
    for step in range(80):
        tick = asyncio.ensure_future(queue.tick())
        await asyncio.sleep(step * took / 40)
        if tick.done():
            continue
        tick.cancel()
        with pytest.raises(asyncio.CancelledError):
            await tick
        landed += 1
    assert landed >= 10  # cancellations landed at many points of the poll and the write
    queue.release(hold)
    await queue.stop()


async def test_a_newcomer_goes_before_the_rest_of_a_flooding_key(
    gateways: list[PoolQueue], catalog: Catalog
) -> None:
    first, second = gateways
    target = catalog.put(alias(new_pool(), slots=1))
    flood, newcomer = key(), key()
    order: list[str] = []

    async def one(queue: PoolQueue, who: KeyRecord, name: str) -> None:
        hold = await take(queue, target, who)
        order.append(name)
        await asyncio.sleep(0.02)
        queue.release(hold)

    running = await take(first, target, flood)
    floods = [asyncio.ensure_future(one(first, flood, "A")) for _ in range(10)]
    await asyncio.sleep(0.3)  # all ten are queued (on the first gateway)
    late = asyncio.ensure_future(one(second, newcomer, "B"))  # one on the other gateway
    await asyncio.sleep(0.3)
    first.release(running)
    await asyncio.wait_for(asyncio.gather(*floods, late), 10)
    assert order.index("B") <= 1, order  # at most one turn of the flood before it


async def test_batch_yields_to_interactive(gateways: list[PoolQueue], catalog: Catalog) -> None:
    first, second = gateways
    target = catalog.put(alias(new_pool(), slots=1))
    batch, interactive = key("batch"), key("interactive")
    order: list[str] = []

    async def one(queue: PoolQueue, who: KeyRecord, name: str) -> None:
        hold = await take(queue, target, who)
        order.append(name)
        await asyncio.sleep(0.01)
        queue.release(hold)

    running = await take(first, target, batch)
    tasks = [asyncio.ensure_future(one(first, batch, "batch")) for _ in range(8)]
    await asyncio.sleep(0.2)
    tasks += [asyncio.ensure_future(one(second, interactive, "interactive")) for _ in range(8)]
    await asyncio.sleep(0.3)
    first.release(running)
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    # Weights 8 against 1: the interactive key's eight go within the first nine or ten.
    assert order[:9].count("interactive") >= 7, order


async def test_deadline_and_full_queue_answer_pool_busy_with_retry_after(
    gateways: list[PoolQueue], catalog: Catalog
) -> None:
    first, second = gateways
    target = catalog.put(alias(new_pool(), slots=1, max_wait_seconds=0.5, max_queue=1))
    running = await take(first, target, key())
    waiting = asyncio.ensure_future(take(second, target, key()))
    await asyncio.sleep(0.1)
    with pytest.raises(ApiError) as full:  # one waits already: the queue is full
        await take(second, target, key())
    assert (full.value.status, full.value.code) == (503, "pool_busy")
    with pytest.raises(ApiError) as late:
        await waiting
    assert (late.value.status, late.value.code) == (503, "pool_busy")
    assert int(late.value.headers["retry-after"]) >= 1
    # The place given up is gone: the next request waits again, then gets the slot.
    after = asyncio.ensure_future(take(second, target, key()))
    await asyncio.sleep(0.1)
    first.release(running)
    second.release(await asyncio.wait_for(after, 5))


async def test_one_key_cannot_fill_the_queue_for_the_others(
    gateways: list[PoolQueue], catalog: Catalog, redis: Redis
) -> None:
    """A full queue gives a newcomer of another key the place of the flooding key's last
    waiter (which gets the 503 instead), on either gateway; the flooding key's own next
    request is still refused."""
    first, second = gateways
    target = catalog.put(alias(new_pool(), slots=1, max_queue=3))
    flood, newcomer = key(), key()
    running = await take(first, target, flood)
    floods = [asyncio.ensure_future(take(first, target, flood)) for _ in range(3)]
    await asyncio.sleep(0.2)  # three of the flooding key's wait: the queue is full
    with pytest.raises(ApiError) as more:
        await take(first, target, flood)
    assert (more.value.status, more.value.code) == (503, "pool_busy")

    late = asyncio.ensure_future(take(second, target, newcomer))
    done, _ = await asyncio.wait(floods, timeout=2, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1, "one of the flooding key's waiters gives its place up"
    displaced = done.pop().exception()
    assert isinstance(displaced, ApiError), displaced
    assert (displaced.status, displaced.code) == (503, "pool_busy")
    assert int(displaced.headers["retry-after"]) >= 1
    assert not late.done()  # the newcomer waits, in the place it took
    assert await redis.zcard(f"tg:pool:{{{target.pool}|tiny:latest}}:wait") == 3

    first.release(running)  # the newcomer is next: it is ahead of the flood's other two
    second.release(await asyncio.wait_for(late, 5))
    for waiter in floods:  # then the flood's two, one after the other
        if not waiter.done() or waiter.exception() is None:
            first.release(await asyncio.wait_for(waiter, 5))


async def test_a_waiter_whose_place_is_gone_is_refused_at_the_next_poll(
    gateways: list[PoolQueue], catalog: Catalog, redis: Redis
) -> None:
    """Its place lapsed, or a displacement whose message was lost: the poll tells, and the
    request gets its 503 then rather than at its deadline."""
    first, second = gateways
    target = catalog.put(alias(new_pool(), slots=1, max_wait_seconds=5))
    running = await take(first, target, key())
    waiter = asyncio.ensure_future(take(second, target, key()))
    await asyncio.sleep(0.1)
    base = f"tg:pool:{{{target.pool}|tiny:latest}}"
    (member,) = await redis.zrange(f"{base}:wait", 0, -1)
    await redis.zrem(f"{base}:wait", member)
    await redis.zrem(f"{base}:wlease", member)
    with pytest.raises(ApiError) as gone:
        await asyncio.wait_for(waiter, 2)  # polls come every 0.2 s here
    assert (gone.value.status, gone.value.code) == (503, "pool_busy")
    first.release(running)


async def test_a_cancelled_wait_leaves_the_queue_at_once(
    gateways: list[PoolQueue], catalog: Catalog, redis: Redis
) -> None:
    first, second = gateways
    target = catalog.put(alias(new_pool(), slots=1))
    running = await take(first, target, key())
    gone = second.begin(target, key())
    assert gone is not None
    task = asyncio.ensure_future(second.wait(gone, target))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    second.release(gone)  # what the proxy does for a request that ends
    await asyncio.sleep(0.1)
    assert await redis.zcard(f"tg:pool:{{{target.pool}|tiny:latest}}:wait") == 0
    first.release(running)
    await asyncio.sleep(0.1)
    assert await redis.zcard(f"tg:pool:{{{target.pool}|tiny:latest}}:run") == 0


async def test_a_pool_at_zero_holds_publishes_demand_and_serves_when_a_replica_appears(
    gateways: list[PoolQueue], catalog: Catalog, redis: Redis
) -> None:
    first, _ = gateways
    pool = new_pool()
    cold = catalog.put(alias(pool, slots=2, replicas=0, cold_start_seconds=10))
    pubsub = redis.pubsub()
    await pubsub.subscribe("tg:demand")
    held = asyncio.ensure_future(take(first, cold, key()))
    message = None
    for _ in range(50):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            break
    await pubsub.aclose()
    assert message is not None
    assert message["data"] == pool.encode()  # published as soon as it waits
    demand = await redis.hgetall(f"tg:demand:{{{pool}}}")
    entry = orjson.loads(demand[first.instance.encode()])
    assert (entry["inflight"], entry["queued"]) == (0, 1)
    assert 0 < await redis.ttl(f"tg:demand:{{{pool}}}") <= 60
    await asyncio.sleep(0.3)
    assert not held.done()
    catalog.put(alias(pool, slots=2, replicas=1, cold_start_seconds=10))  # a replica is ready
    hold = await asyncio.wait_for(held, 5)
    first.release(hold)


async def test_a_pool_at_zero_answers_pool_busy_after_its_cold_start(
    gateways: list[PoolQueue], catalog: Catalog
) -> None:
    first, _ = gateways
    cold = catalog.put(alias(new_pool(), slots=1, replicas=0, cold_start_seconds=0.5))
    with pytest.raises(ApiError) as refused:
        await take(first, cold, key())
    assert (refused.value.status, refused.value.code) == (503, "pool_busy")
    assert refused.value.headers["retry-after"] == "1"


async def test_a_pools_keys_always_expire_and_keep_their_expiry_while_in_use(
    gateways: list[PoolQueue], catalog: Catalog, redis: Redis
) -> None:
    """The acquire's fast path pushes the expiry back only every half of it (and whenever
    the running set is new): the keys never live on without one."""
    first = gateways[0]
    target = catalog.put(alias(new_pool(), slots=4, replicas=1))
    base = f"tg:pool:{{{target.pool}|tiny:latest}}"
    keep_ms = 15_000 * 4
    for _ in range(2):  # the second round starts from an empty (deleted) running set
        holds = [await take(first, target, key()) for _ in range(3)]
        for name in ("run", "tags"):
            ttl = await redis.pttl(f"{base}:{name}")
            assert keep_ms / 2 < ttl <= keep_ms, (name, ttl)
        for hold in holds:
            first.release(hold)
        await asyncio.sleep(0.1)
        assert await redis.exists(f"{base}:run") == 0
    # Due again (as half the expiry later): the next acquire pushes both back to the full span.
    await redis.hset(f"{base}:tags", "x", 0)
    await redis.pexpire(f"{base}:tags", 1_000)
    hold = await take(first, target, key())
    assert await redis.pttl(f"{base}:tags") > keep_ms / 2
    assert int(await redis.hget(f"{base}:tags", "x")) > 0
    first.release(hold)
