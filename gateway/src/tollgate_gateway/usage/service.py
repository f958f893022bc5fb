"""Usage queries: summaries per key, alias or app, and a key's spend this month."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Literal

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollgate_schema.orm import ApiKey, App, Model, UsageEvent

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
                func.count().filter(UsageEvent.status == 429).label("refused"),
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
            rows = [dict(r) for r in (await conn.execute(query)).mappings().all()]
            names = await self._names(conn, group_by, [r["group"] for r in rows])
        for row in rows:
            row["id"], row["name"] = names.get(row["group"], (None, None))
            if group_by != "key" and row["name"] is None:
                row["name"] = row["group"]  # an alias or app deleted since: its name stays
        return rows

    @staticmethod
    async def _names(
        conn: AsyncConnection, group_by: GroupBy, groups: list[str | None]
    ) -> dict[str | None, tuple[str, str]]:
        """(id, name) of each group's key, alias or app, where it still exists."""
        values = [g for g in groups if g is not None]
        if not values:
            return {}
        if group_by == "key":
            ids = []
            for value in values:
                try:
                    ids.append(uuid.UUID(value))
                except ValueError:
                    continue
            query = select(ApiKey.id, ApiKey.name).where(ApiKey.id.in_(ids))
            return {str(i): (str(i), n) for i, n in (await conn.execute(query)).all()}
        table = Model if group_by == "alias" else App
        column = Model.alias if group_by == "alias" else App.name
        query = select(table.id, column).where(column.in_(values))
        return {n: (str(i), n) for i, n in (await conn.execute(query)).all()}
