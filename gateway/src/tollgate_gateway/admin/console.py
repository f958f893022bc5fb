"""Read endpoints for the web console: overview, usage explorer (JSON and CSV), key activity.

Everything reads the usage rollups (migration 0019), so each screen costs a handful of small
queries whatever the number of usage rows. Viewers and admins may read all of it.
"""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import func, select
from starlette.responses import Response

from tollgate_gateway.dependencies import CurrentUser, ServicesDep
from tollgate_gateway.errors import ApiError
from tollgate_gateway.limits.service import month_start
from tollgate_gateway.usage.rollup import (
    Bucket,
    GroupBy,
    RollupService,
    Totals,
    floor_day,
    floor_hour,
)
from tollgate_schema.orm import ApiKey, Model

router = APIRouter(prefix="/admin/console", tags=["console"])
MAX_RANGE = timedelta(days=400)
TOP = 5


class TotalsOut(BaseModel):
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    error_rate: float

    @classmethod
    def of(cls, t: Totals) -> TotalsOut:
        return cls(
            requests=t.requests,
            errors=t.errors,
            prompt_tokens=t.prompt_tokens,
            completion_tokens=t.completion_tokens,
            cost=t.cost,
            error_rate=t.error_rate,
        )


class TopRow(BaseModel):
    group: str | None
    label: str
    requests: int
    tokens: int
    cost: Decimal


class OverviewWindow(BaseModel):
    window: Literal["24h", "7d"]
    since: datetime
    until: datetime
    totals: TotalsOut
    top_keys: list[TopRow]
    top_apps: list[TopRow]
    top_models: list[TopRow]


class Overview(BaseModel):
    windows: list[OverviewWindow]
    keys_active: int
    models_enabled: int


class ExplorerRow(BaseModel):
    group: str | None
    label: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None


class SeriesPoint(BaseModel):
    bucket: datetime
    requests: int
    errors: int
    tokens: int
    cost: Decimal


class Explorer(BaseModel):
    since: datetime
    until: datetime
    group_by: GroupBy
    bucket: Bucket
    rows: list[ExplorerRow]
    series: list[SeriesPoint]


class KeyActivity(BaseModel):
    id: uuid.UUID
    month: str
    month_spend: Decimal
    last_used: datetime | None


def _window(since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    until = until or datetime.now(UTC)
    since = since or until - timedelta(days=1)
    if since.tzinfo is None or until.tzinfo is None:
        raise ApiError(
            400, "since and until need a timezone, e.g. 2026-11-01T00:00:00Z", param="since"
        )
    if since >= until:
        raise ApiError(400, "since must be before until.", param="since")
    if until - since > MAX_RANGE:
        raise ApiError(400, "The range may span at most 400 days.", param="since")
    return since, until


def _top(rows: list[dict[str, Any]]) -> list[TopRow]:
    return [
        TopRow(
            group=r["group"],
            label=r["label"],
            requests=r["requests"],
            tokens=r["prompt_tokens"] + r["completion_tokens"],
            cost=r["cost"],
        )
        for r in rows
    ]


@router.get("/overview")
async def overview(_: CurrentUser, services: ServicesDep) -> Overview:
    rollups = RollupService(services.engine)
    now = datetime.now(UTC)
    windows = []
    spans: list[tuple[Literal["24h", "7d"], timedelta]] = [
        ("24h", timedelta(days=1)),
        ("7d", timedelta(days=7)),
    ]
    for name, span in spans:
        since = now - span
        by_key = await rollups.explore("key", since, now, histograms=False)
        by_app = await rollups.explore("app", since, now, limit=TOP, histograms=False)
        by_model = await rollups.explore("model", since, now, limit=TOP, histograms=False)
        totals = Totals(
            requests=sum(int(r["requests"]) for r in by_key),
            errors=sum(int(r["errors"]) for r in by_key),
            prompt_tokens=sum(int(r["prompt_tokens"]) for r in by_key),
            completion_tokens=sum(int(r["completion_tokens"]) for r in by_key),
            cost=sum((Decimal(r["cost"]) for r in by_key), Decimal(0)),
        )
        windows.append(
            OverviewWindow(
                window=name,
                since=since,
                until=now,
                totals=TotalsOut.of(totals),
                top_keys=_top(by_key[:TOP]),
                top_apps=_top(by_app),
                top_models=_top(by_model),
            )
        )
    async with services.engine.connect() as conn:
        active = (
            await conn.execute(
                select(func.count())
                .select_from(ApiKey)
                .where(ApiKey.revoked_at.is_(None), ApiKey.disabled.is_(False))
            )
        ).scalar_one()
        enabled = (
            await conn.execute(select(func.count()).select_from(Model).where(Model.enabled))
        ).scalar_one()
    return Overview(windows=windows, keys_active=active, models_enabled=enabled)


async def _explore(
    services: ServicesDep,
    group_by: GroupBy,
    since: datetime | None,
    until: datetime | None,
    bucket: Bucket | None,
) -> Explorer:
    since, until = _window(since, until)
    bucket = bucket or ("hour" if until - since <= timedelta(days=2) else "day")
    rollups = RollupService(services.engine)
    rows = await rollups.explore(group_by, since, until)
    series = _fill(await rollups.series(since, until, bucket), since, until, bucket)
    return Explorer(
        since=since,
        until=until,
        group_by=group_by,
        bucket=bucket,
        rows=[ExplorerRow.model_validate(r) for r in rows],
        series=[SeriesPoint.model_validate(p) for p in series],
    )


def _fill(
    points: list[dict[str, Any]], since: datetime, until: datetime, bucket: Bucket
) -> list[dict[str, Any]]:
    """Every hour or day of the range, zeros where there was no traffic, so a chart's time
    axis is even."""
    found = {p["bucket"].astimezone(UTC): p for p in points}
    step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    at = floor_hour(since) if bucket == "hour" else floor_day(since)
    out = []
    while at < until:
        zero = {"bucket": at, "requests": 0, "errors": 0, "tokens": 0, "cost": Decimal(0)}
        out.append(found.get(at, zero))
        at += step
    return out


GroupQuery = Annotated[GroupBy, Query()]
TimeQuery = Annotated[datetime | None, Query()]
BucketQuery = Annotated[Bucket | None, Query()]


@router.get("/usage")
async def usage(
    _: CurrentUser,
    services: ServicesDep,
    group_by: GroupQuery = "key",
    since: TimeQuery = None,
    until: TimeQuery = None,
    bucket: BucketQuery = None,
) -> Explorer:
    """Usage per key, app, model or endpoint over [since, until) at hour resolution (default:
    the last 24 hours), with a time series per hour (ranges up to two days) or per UTC day."""
    return await _explore(services, group_by, since, until, bucket)


CSV_COLUMNS = [
    "group",
    "label",
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    "latency_p50_ms",
    "latency_p95_ms",
    "ttft_p50_ms",
    "ttft_p95_ms",
]


@router.get("/usage.csv", response_class=Response)
async def usage_csv(
    _: CurrentUser,
    services: ServicesDep,
    group_by: GroupQuery = "key",
    since: TimeQuery = None,
    until: TimeQuery = None,
) -> Response:
    """The explorer's table as CSV."""
    data = await _explore(services, group_by, since, until, None)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([group_by if c == "group" else c for c in CSV_COLUMNS])
    for row in data.rows:
        values = row.model_dump()
        cells = ["" if values[c] is None else values[c] for c in CSV_COLUMNS]
        # A label a spreadsheet would run as a formula is quoted with a leading apostrophe.
        cells = [f"'{v}" if isinstance(v, str) and v[:1] in "=+-@\t\r" else v for v in cells]
        writer.writerow(cells)
    name = f"tollgate-usage-{group_by}-{data.since:%Y%m%dT%H%M}-{data.until:%Y%m%dT%H%M}.csv"
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )


@router.get("/keys/activity")
async def keys_activity(_: CurrentUser, services: ServicesDep) -> list[KeyActivity]:
    """Month-to-date spend and last request per key, for the keys list."""
    start = month_start(datetime.now(UTC))
    activity = await RollupService(services.engine).key_activity(start)
    return [
        KeyActivity(
            id=key_id,
            month=f"{start:%Y-%m}",
            month_spend=a.get("month_spend", Decimal(0)),
            last_used=a.get("last_used"),
        )
        for key_id, a in activity.items()
    ]
