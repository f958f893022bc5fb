"""Model aliases, held in memory and reloaded whenever Postgres announces a change."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollgate_gateway.keys.service import FEED_DOWN_TTL
from tollgate_gateway.storage.orm import Model

PER_MILLION = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class Alias:
    alias: str
    backend_tag: str
    backend_url: str
    enabled: bool
    input_price_per_mtok: Decimal
    output_price_per_mtok: Decimal
    created: int

    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        return (
            self.input_price_per_mtok * prompt_tokens
            + self.output_price_per_mtok * completion_tokens
        ) / PER_MILLION

    @property
    def priced(self) -> bool:
        return bool(self.input_price_per_mtok or self.output_price_per_mtok)


class Catalog:
    def __init__(self, engine: AsyncEngine, default_backend_url: str) -> None:
        self._engine = engine
        self._default_url = default_backend_url.rstrip("/")
        self._aliases: dict[str, Alias] = {}
        self._loaded_at = 0.0
        self._stale = True
        self._lock = asyncio.Lock()
        self.feed_healthy = False

    async def get(self, alias: str) -> Alias | None:
        await self._fresh()
        return self._aliases.get(alias)

    async def all(self) -> list[Alias]:
        await self._fresh()
        return sorted(self._aliases.values(), key=lambda a: a.alias)

    def invalidate(self) -> None:
        self._stale = True

    async def _fresh(self) -> None:
        expired = not self.feed_healthy and time.monotonic() - self._loaded_at > FEED_DOWN_TTL
        if self._stale or expired:
            async with self._lock:
                if self._stale or expired:
                    await self.reload()

    async def reload(self) -> None:
        self._stale = False
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(Model.__table__))).all()
        self._aliases = {
            m.alias: Alias(
                alias=m.alias,
                backend_tag=m.backend_tag,
                backend_url=(m.backend_url or self._default_url).rstrip("/"),
                enabled=m.enabled,
                input_price_per_mtok=m.input_price_per_mtok,
                output_price_per_mtok=m.output_price_per_mtok,
                created=int(m.created_at.timestamp()),
            )
            for m in rows
        }
        self._loaded_at = time.monotonic()
