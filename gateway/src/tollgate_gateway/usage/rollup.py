"""Usage queries over the hourly and daily rollups (migration 0019), never over usage_events.

Each rollup row holds one value of one dimension (key, app, model or endpoint) in one hour
or day. A range is read at hour resolution: whole UTC days inside it come from usage_daily,
the hours at either edge from usage_hourly. A 30-day query by key therefore reads about 30
rows per key instead of every request. Totals read the endpoint dimension (every event has
exactly one endpoint). Latency and TTFT percentiles are
estimated from summed histogram buckets (linear inside a bucket).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select, Subquery, Table, func, select, union_all
from sqlalchemy.ext.asyncio import AsyncEngine

from tollgate_schema.orm import (
    ROLLUP_BUCKETS_MS,
    ROLLUP_LAT,
    ROLLUP_TTFT,
    ApiKey,
    UsageEvent,
    usage_daily,
    usage_hourly,
)

GroupBy = Literal["key", "app", "model", "endpoint"]
Bucket = Literal["hour", "day"]
TOTALS_DIM = "endpoint"
SUMMED = ("requests", "errors", "prompt_tokens", "completion_tokens", "cost", "latency_ms_sum")
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def floor_hour(ts: datetime) -> datetime:
    ts = ts.astimezone(UTC)
    return ts.replace(minute=0, second=0, microsecond=0)


def ceil_hour(ts: datetime) -> datetime:
    floor = floor_hour(ts)
    return floor if floor == ts.astimezone(UTC) else floor + HOUR


def floor_day(ts: datetime) -> datetime:
    return floor_hour(ts).replace(hour=0)


def ceil_day(ts: datetime) -> datetime:
    floor = floor_day(ts)
    return floor if floor == ts.astimezone(UTC) else floor + DAY


def percentile(counts: list[int], q: float) -> float | None:
    """The q-quantile (0..1) of a histogram over ROLLUP_BUCKETS_MS, or None when empty."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, c in enumerate(counts):
        if c and seen + c >= rank:
            if i >= len(ROLLUP_BUCKETS_MS):
                return float(ROLLUP_BUCKETS_MS[-1])
            low = 0.0 if i == 0 else float(ROLLUP_BUCKETS_MS[i - 1])
            high = float(ROLLUP_BUCKETS_MS[i])
            return low + (high - low) * (rank - seen) / c
        seen += c
    return float(ROLLUP_BUCKETS_MS[-1])


@dataclass(frozen=True)
class Totals:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = Decimal(0)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def _ranged(
    table: Table, dim: str, since: datetime, until: datetime, value: str | None
) -> Select[Any]:
    query = select(table).where(table.c.dim == dim, table.c.bucket >= since, table.c.bucket < until)
    return query if value is None else query.where(table.c.value == value)


def source(
    dim: str,
    since: datetime,
    until: datetime,
    value: str | None = None,
    hourly_only: bool = False,
) -> Subquery:
    """The rollup rows of one dimension (optionally one value) covering [since, until) at
    hour resolution."""
    start, end = floor_hour(since), ceil_hour(until)
    first_day, last_day = ceil_day(start), floor_day(end)
    if hourly_only or first_day >= last_day:
        return _ranged(usage_hourly, dim, start, end, value).subquery("rollup")
    parts = [_ranged(usage_daily, dim, first_day, last_day, value)]
    if start < first_day:
        parts.append(_ranged(usage_hourly, dim, start, first_day, value))
    if last_day < end:
        parts.append(_ranged(usage_hourly, dim, last_day, end, value))
    if len(parts) == 1:
        return parts[0].subquery("rollup")
    return union_all(*parts).subquery("rollup")


def _sums(src: Subquery, histograms: bool) -> list[ColumnElement[Any]]:
    cols: list[ColumnElement[Any]] = [func.sum(src.c[c]).label(c) for c in SUMMED]
    if histograms:
        cols += [func.sum(src.c[c]).label(c) for c in (*ROLLUP_LAT, *ROLLUP_TTFT)]
    return cols


class RollupService:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def explore(
        self,
        group_by: GroupBy,
        since: datetime,
        until: datetime,
        limit: int | None = None,
        histograms: bool = True,
    ) -> list[dict[str, Any]]:
        """One row per group, most requests first, with totals and latency/TTFT percentiles."""
        src = source(group_by, since, until)
        group = src.c.value
        query = (
            select(group.label("group"), *_sums(src, histograms))
            .group_by(group)
            .order_by(func.sum(src.c.requests).desc(), group)
        )
        if limit is not None:
            query = query.limit(limit)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
            names: dict[uuid.UUID, tuple[str, str]] = {}
            if group_by == "key":
                ids = [uuid.UUID(r["group"]) for r in rows if r["group"] is not None]
                if ids:
                    found = await conn.execute(
                        select(ApiKey.id, ApiKey.name, ApiKey.key_prefix).where(ApiKey.id.in_(ids))
                    )
                    names = {i: (n, p) for i, n, p in found.all()}
        out = []
        for r in rows:
            group_value = r["group"]
            if group_by == "key" and group_value is not None:
                name, prefix = names.get(uuid.UUID(group_value), ("(deleted key)", ""))
                label = f"{name} ({prefix}…)" if prefix else name
            else:
                label = group_value if group_value is not None else "(none)"
            row: dict[str, Any] = {
                "group": group_value,
                "label": label,
                "requests": int(r["requests"]),
                "errors": int(r["errors"]),
                "prompt_tokens": int(r["prompt_tokens"]),
                "completion_tokens": int(r["completion_tokens"]),
                "cost": Decimal(r["cost"]),
            }
            if histograms:
                lat = [int(r[c]) for c in ROLLUP_LAT]
                ttft = [int(r[c]) for c in ROLLUP_TTFT]
                row |= {
                    "latency_p50_ms": percentile(lat, 0.5),
                    "latency_p95_ms": percentile(lat, 0.95),
                    "ttft_p50_ms": percentile(ttft, 0.5),
                    "ttft_p95_ms": percentile(ttft, 0.95),
                }
            out.append(row)
        return out

    async def totals(
        self, since: datetime, until: datetime, key_id: uuid.UUID | None = None
    ) -> Totals:
        if key_id is None:
            src = source(TOTALS_DIM, since, until)
        else:
            src = source("key", since, until, str(key_id))
        query = select(*_sums(src, histograms=False))
        async with self._engine.connect() as conn:
            r = (await conn.execute(query)).mappings().one()
        return Totals(
            requests=int(r["requests"] or 0),
            errors=int(r["errors"] or 0),
            prompt_tokens=int(r["prompt_tokens"] or 0),
            completion_tokens=int(r["completion_tokens"] or 0),
            cost=Decimal(r["cost"] or 0),
        )

    async def series(
        self, since: datetime, until: datetime, bucket: Bucket, key_id: uuid.UUID | None = None
    ) -> list[dict[str, Any]]:
        """Requests, errors, tokens and cost per hour or per UTC day, oldest first."""
        hourly = bucket == "hour"
        if key_id is None:
            src = source(TOTALS_DIM, since, until, hourly_only=hourly)
        else:
            src = source("key", since, until, str(key_id), hourly_only=hourly)
        when = func.date_trunc(bucket, src.c.bucket, "UTC").label("bucket")
        query = (
            select(
                when,
                func.sum(src.c.requests).label("requests"),
                func.sum(src.c.errors).label("errors"),
                func.sum(src.c.prompt_tokens + src.c.completion_tokens).label("tokens"),
                func.sum(src.c.cost).label("cost"),
            )
            .group_by(when)
            .order_by(when)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            {
                "bucket": r["bucket"],
                "requests": int(r["requests"]),
                "errors": int(r["errors"]),
                "tokens": int(r["tokens"]),
                "cost": Decimal(r["cost"]),
            }
            for r in rows
        ]

    async def key_activity(self, month_start: datetime) -> dict[uuid.UUID, dict[str, Any]]:
        """Month-to-date spend (from the rollups) and the last request (one index probe of
        usage_events per key) of every key."""
        src = source("key", month_start, datetime.now(UTC))
        spend = select(src.c.value, func.sum(src.c.cost).label("spend")).group_by(src.c.value)
        newest = (
            select(func.max(UsageEvent.ts))
            .where(UsageEvent.key_id == ApiKey.id)
            .correlate(ApiKey)
            .scalar_subquery()
        )
        last = select(ApiKey.id, newest.label("last"))
        out: dict[uuid.UUID, dict[str, Any]] = {}
        async with self._engine.connect() as conn:
            for key_id, value in (await conn.execute(spend)).all():
                if key_id is not None:
                    out.setdefault(uuid.UUID(key_id), {})["month_spend"] = Decimal(value)
            for key_id, value in (await conn.execute(last)).all():
                out.setdefault(key_id, {})["last_used"] = value
        return out
