"""The limiter's and the proxy relay's pieces, in process, against a real Valkey."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from redis.asyncio import Redis

from tollgate_dev.services import LocalValkey
from tollgate_gateway.chat.service import Reply
from tollgate_gateway.limits.breaker import Breaker
from tollgate_gateway.limits.service import Script, ScriptClient
from tollgate_gateway.middleware import _send_stream


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
