"""Redis adapter: the demand the gateways publish per pool (autoscaling).

Each gateway process keeps one field of the hash ``tg:demand:{<namespace>/<pool>}``: its
instance id -> ``{"inflight": n, "queued": n, "at": unix seconds}``, written about once a
second while it has requests for the pool, and at once when a request starts to wait for a
pool with no ready replica; it then also publishes the pool on the channel ``tg:demand``.
A pool's demand is the sum over the fields written within the last ``fresh`` seconds, so a
gateway that died stops counting.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tollgate_operator.errors import Unavailable

logger = logging.getLogger(__name__)

CHANNEL = "tg:demand"


def demand_key(pool: str) -> str:
    """``tg:demand:{team/small}``: the braces keep a pool's key in one Redis Cluster slot."""
    return f"tg:demand:{{{pool}}}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def sum_fresh(entries: Mapping[Any, Any], now: float, fresh: float) -> int:
    """In flight + queued over the entries written in the last ``fresh`` seconds; entries
    that are not the contract's JSON are skipped."""
    total = 0
    for raw in entries.values():
        try:
            entry = json.loads(_text(raw))
            if not isinstance(entry, dict) or now - float(entry["at"]) > fresh:
                continue
            total += max(0, int(entry.get("inflight", 0))) + max(0, int(entry.get("queued", 0)))
        except (ValueError, TypeError, KeyError):
            continue
    return total


class DemandReader:
    def __init__(self, url: str, fresh: float) -> None:
        # Any: redis-py types its commands as "awaitable or not" for both clients.
        self._redis: Any = aioredis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
        # The channel waits for messages as long as it takes: no read timeout there.
        self._channel: Any = aioredis.from_url(
            url, socket_connect_timeout=3, health_check_interval=30
        )
        self.fresh = fresh

    async def close(self) -> None:
        await self._redis.aclose()
        await self._channel.aclose()

    async def demand(self, pool: str, now: float) -> int:
        try:
            entries = await self._redis.hgetall(demand_key(pool))
        except (RedisError, OSError) as exc:
            raise Unavailable("redis", f"demand of {pool}: {type(exc).__name__}") from exc
        return sum_fresh(entries, now, self.fresh)

    async def listen(self, on_pool: Callable[[str], None]) -> None:
        """Call ``on_pool`` for every pool a gateway announces (a request waits for it), until
        cancelled; reconnects after an outage (the periodic samples go on meanwhile)."""
        while True:
            try:
                async with self._channel.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            on_pool(_text(message["data"]))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                logger.warning("demand channel %s: %s; resubscribing", CHANNEL, exc)
            await asyncio.sleep(2)
