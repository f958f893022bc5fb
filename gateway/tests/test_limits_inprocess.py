"""The limiter's and the proxy relay's pieces, in process, against a real Valkey."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from tollgate_dev.servers.backing import LocalValkey
from tollgate_gateway.chat.service import Reply
from tollgate_gateway.limits.breaker import Breaker
from tollgate_gateway.limits.service import Script, ScriptClient
from tollgate_gateway.middleware import _send_stream
from tollgate_gateway.usage.stream import GROUP, UsageStream, to_lines
from tollgate_gateway.usage.writer import UsageRow, copy_line, insert_lines
from tollgate_schema.db import create_engine
from tollgate_schema.dsn import to_sqlalchemy_dsn


def script(source: str) -> Script:
    return Script(source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


async def test_caller_cancelled_while_connecting_does_not_strand_the_others(
    valkey: LocalValkey,
) -> None:
    redis = Redis.from_url(valkey.url)
    client = ScriptClient(redis, 2.0)
    one = script("return 1")
    try:
        first = asyncio.ensure_future(client.run(one, [], []))
        await asyncio.sleep(0)  # the first caller is opening the connection now
        second = asyncio.ensure_future(client.run(one, [], []))
        await asyncio.sleep(0)
        first.cancel()
        assert await asyncio.wait_for(second, 3) == 1
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await asyncio.wait_for(client.run(one, [], []), 3) == 1
    finally:
        await client.close()
        await redis.aclose()


async def test_stream_is_settled_when_the_response_cannot_start() -> None:
    events: list[str] = []

    async def chunks() -> Any:
        events.append("started")
        yield b"x"

    async def broken_send(message: Any) -> None:
        raise OSError("the client is gone")

    reply = Reply(200, [], stream=chunks(), after=lambda: events.append("settled"))
    with pytest.raises(OSError, match="gone"):
        await _send_stream(broken_send, reply, b"rid")
    assert events == ["settled"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_repeated_failures_and_probes_once_per_window() -> None:
    clock = Clock()
    breaker = Breaker(threshold=3, backoff=1.0, max_backoff=4.0, clock=clock)
    assert breaker.allow()
    assert not breaker.failure()
    assert not breaker.failure()
    assert breaker.failure()  # the third in a row opens it
    assert breaker.open
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()  # one probe when the window has passed...
    assert not breaker.allow()  # ...and only one
    assert not breaker.failure()  # the probe failed: open again, for twice as long
    clock.now += 1.5
    assert not breaker.allow()
    clock.now += 0.5
    assert breaker.allow()
    assert breaker.success()  # the probe succeeded: closed
    assert not breaker.open
    assert breaker.allow()
    assert not breaker.failure()  # the count starts again
    assert breaker.success() is False


def test_breaker_backoff_is_capped_and_stale_failures_do_not_extend_it() -> None:
    clock = Clock()
    breaker = Breaker(threshold=1, backoff=1.0, max_backoff=2.0, clock=clock)
    assert breaker.failure()
    assert not breaker.failure()  # a call from before the opening: the window stays
    clock.now += 1.0
    assert breaker.allow()
    for _ in range(5):  # probes keep failing: the window doubles up to the cap
        breaker.failure()
        clock.now += 2.0
        assert breaker.allow()
    clock.now += 1.0
    assert not breaker.allow()  # a probe that never reported holds the window...
    clock.now += 1.0
    assert breaker.allow()  # ...until it expires


async def test_unacknowledged_usage_is_reclaimed_once(
    valkey: LocalValkey, migrated_dsn: str
) -> None:
    """Entries a dead writer read (and perhaps committed) are written exactly once."""
    stream = f"test-usage-{uuid.uuid4().hex}"
    redis = Redis.from_url(valkey.url)
    engine = create_engine(to_sqlalchemy_dsn(migrated_dsn))
    drainer = UsageStream(redis, engine, 100, 0.05, reclaim_seconds=0.05, stream=stream)
    request_ids = [f"reclaim-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    try:
        await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        for rid in request_ids:
            await redis.xadd(stream, {"r": copy_line(row(rid))})
        # A writer reads all three, commits the first and dies before acknowledging.
        reply: Any = await redis.xreadgroup(GROUP, "dead-writer", {stream: ">"}, count=10)
        entries = reply[0][1]
        _, first = to_lines(entries[:1])
        await insert_lines(engine, first)
        await asyncio.sleep(0.1)  # idle longer than reclaim_seconds
        assert await drainer.reclaim() == 3
        assert await drainer.reclaim() == 0  # acknowledged and deleted
        assert await redis.xlen(stream) == 0
        async with engine.connect() as conn:
            found = (
                await conn.execute(
                    text("SELECT request_id FROM usage_events WHERE request_id = ANY(:ids)"),
                    {"ids": request_ids},
                )
            ).all()
        assert sorted(r[0] for r in found) == sorted(request_ids)
        await asyncio.sleep(0.6)  # the dead writer, with nothing pending, is forgotten
        assert await drainer.reclaim() == 0
        names = [c["name"] for c in await redis.xinfo_consumers(stream, GROUP)]
        assert b"dead-writer" not in names
    finally:
        await redis.delete(stream)
        await redis.aclose()
        await engine.dispose()


def row(request_id: str) -> UsageRow:
    return UsageRow(
        ts=datetime.now(UTC),
        request_id=request_id,
        key_id=None,
        app=None,
        alias="a",
        backend_tag="b",
        endpoint="chat.completions",
        status=200,
        prompt_tokens=1,
        completion_tokens=2,
        cost=Decimal("0.1"),
        latency_ms=1.0,
        ttft_ms=None,
        streamed=False,
        error_class=None,
    )
