"""Model aliases, held in memory and reloaded whenever Postgres announces a change."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollgate_gateway.errors import service_unavailable
from tollgate_gateway.fairqueue.config import QueueConfig, queue_config
from tollgate_gateway.routing.model import DEFAULT_ROUTING, RoutingConfig, Target, routing_config
from tollgate_gateway.storage.changes import FEED_DOWN_TTL
from tollgate_gateway.storage.outage import UNAVAILABLE, DatabaseHealth
from tollgate_schema.orm import Model

PER_MILLION = Decimal(1_000_000)
MAX_BACKOFF = 30.0


@dataclass(frozen=True, slots=True)
class Alias:
    alias: str
    backend_tag: str
    backend_url: str
    enabled: bool
    input_price_per_mtok: Decimal
    output_price_per_mtok: Decimal
    created: int
    pending: bool = False  # disabled until its model is ready
    # Several replicas: each request is routed to one (routing/). None: `backend_url` as it
    # is (one replica, or a Service); empty: no replica may take traffic now.
    replicas: tuple[Target, ...] | None = None
    routing: RoutingConfig = DEFAULT_ROUTING
    pool: str = ""  # the metrics' pool label
    queue: QueueConfig | None = None  # the pool's queue (pools/); None: straight through

    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        return (
            self.input_price_per_mtok * prompt_tokens
            + self.output_price_per_mtok * completion_tokens
        ) / PER_MILLION

    @property
    def priced(self) -> bool:
        return bool(self.input_price_per_mtok or self.output_price_per_mtok)


class Catalog:
    """The aliases. While Postgres is down the last good catalog is kept (for the grace
    period of `health`) and reloads back off, from one second to MAX_BACKOFF."""

    def __init__(
        self, engine: AsyncEngine, default_backend_url: str, health: DatabaseHealth
    ) -> None:
        self._engine = engine
        self._default_url = default_backend_url.rstrip("/")
        self._aliases: dict[str, Alias] = {}
        self._loaded_at = 0.0
        self._stale = True
        self._lock = asyncio.Lock()
        self._retry_at = 0.0
        self._backoff = 1.0
        self.feed_healthy = False
        self.health = health

    async def get(self, alias: str) -> Alias | None:
        await self._fresh()
        return self._aliases.get(alias)

    async def all(self) -> list[Alias]:
        await self._fresh()
        return sorted(self._aliases.values(), key=lambda a: a.alias)

    def invalidate(self) -> None:
        self._stale = True

    async def _fresh(self) -> None:
        now = time.monotonic()
        expired = not self.feed_healthy and now - self._loaded_at > FEED_DOWN_TTL
        if not (self._stale or expired):
            return
        if now >= self._retry_at:
            async with self._lock:
                if time.monotonic() >= self._retry_at and (self._stale or expired):
                    try:
                        await self.reload()
                    except UNAVAILABLE as exc:
                        self.health.failed(exc)
                        self._stale = True  # reload once the database is back
                        self._retry_at = time.monotonic() + self._backoff
                        self._backoff = min(self._backoff * 2, MAX_BACKOFF)
                    else:
                        self.health.ok()
                        self._backoff = 1.0
                        self._retry_at = 0.0
                        return
        if self._loaded_at == 0.0 or not self.health.within_grace():
            raise service_unavailable("The model catalog")

    async def reload(self) -> None:
        self._stale = False
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(Model.__table__))).all()
        self._aliases = {m.alias: self._alias(m) for m in rows}
        self._loaded_at = time.monotonic()

    def _alias(self, m: Any) -> Alias:
        url = (m.backend_url or self._default_url).rstrip("/")
        replicas = _targets(m.replicas)
        if replicas is not None and len(replicas) == 1:
            # One replica: nothing to choose, so the request path stays the direct one.
            url, replicas = replicas[0].url, None
        routing = m.routing if isinstance(m.routing, dict) else None
        pool = str((routing or {}).get("pool") or m.alias)
        return Alias(
            alias=m.alias,
            backend_tag=m.backend_tag,
            backend_url=url,
            enabled=m.enabled,
            input_price_per_mtok=m.input_price_per_mtok,
            output_price_per_mtok=m.output_price_per_mtok,
            created=int(m.created_at.timestamp()),
            pending=m.pending,
            replicas=replicas,
            routing=routing_config(routing),
            pool=pool,
            queue=queue_config(routing),
        )


def _targets(data: Any) -> tuple[Target, ...] | None:
    if not isinstance(data, list):
        return None
    targets: dict[str, Target] = {}
    for item in data:
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            url = item["url"].rstrip("/")
            targets[url] = Target(str(item.get("name") or url), url)
    return tuple(sorted(targets.values(), key=lambda t: t.name))
