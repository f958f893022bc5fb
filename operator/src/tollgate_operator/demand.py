"""Redis adapter: the demand the gateways publish per pool (autoscaling). The contract (key,
entry, channel, what counts) is `tollgate_schema.demand`, shared with the gateways."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tollgate_operator.errors import Unavailable
from tollgate_schema.demand import CHANNEL, demand_key, sum_fresh

logger = logging.getLogger(__name__)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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
