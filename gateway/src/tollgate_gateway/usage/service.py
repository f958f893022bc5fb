"""Usage queries: summaries per key, alias or app, and a key's spend this month."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Literal

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollgate_schema.orm import UsageEvent

GroupBy = Literal["key", "alias", "app"]


class UsageService:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def month_spend(self, key_id: uuid.UUID, month_start: datetime) -> Decimal:
        query = select(func.coalesce(func.sum(UsageEvent.cost), 0)).where(
            UsageEvent.key_id == key_id, UsageEvent.ts >= month_start
        )
        async with self._engine.connect() as conn:
            value = (await conn.execute(query)).scalar_one()
        return Decimal(value)

    async def summary(
        self, group_by: GroupBy, since: datetime, until: datetime
    ) -> list[dict[str, object]]:
        column = {
            "key": cast(UsageEvent.key_id, UsageEvent.alias.type),
            "alias": UsageEvent.alias,
            "app": UsageEvent.app,
        }[group_by]
        latency = UsageEvent.latency_ms
        query = (
            select(
                column.label("group"),
                func.count().label("requests"),
                func.count().filter(UsageEvent.status >= 400).label("errors"),
                cast(func.coalesce(func.sum(UsageEvent.prompt_tokens), 0), Integer).label(
                    "prompt_tokens"
                ),
                cast(func.coalesce(func.sum(UsageEvent.completion_tokens), 0), Integer).label(
                    "completion_tokens"
                ),
                func.coalesce(func.sum(UsageEvent.cost), 0).label("cost"),
                func.percentile_cont(0.5).within_group(latency).label("latency_p50_ms"),
                func.percentile_cont(0.95).within_group(latency).label("latency_p95_ms"),
                func.percentile_cont(0.5).within_group(UsageEvent.ttft_ms).label("ttft_p50_ms"),
            )
            .where(UsageEvent.ts >= since, UsageEvent.ts < until)
            .group_by(column)
            .order_by(func.count().desc())
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [dict(r) for r in rows]
