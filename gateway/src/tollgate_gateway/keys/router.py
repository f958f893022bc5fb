"""GET /v1/key: a key holder's view of their own key (no admin account needed).

Authenticated with the API key itself, it answers only about that key: its allowed models,
limits, this month's spend and what is left of the budget, and its last 30 days of usage.
It lives under /v1 so that it is reachable wherever the API is (the chart's ingress routes /v1).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tollgate_gateway.limits.service import month_start
from tollgate_gateway.services import Services
from tollgate_gateway.usage.rollup import RollupService
from tollgate_schema.orm import ApiKey


class UsageTotals(BaseModel):
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    error_rate: float


class ModelPrice(BaseModel):
    alias: str
    input_price_per_mtok: Decimal
    output_price_per_mtok: Decimal


class SelfKey(BaseModel):
    id: str
    name: str
    key_prefix: str
    owner: str | None
    app: str | None
    allowed_models: str
    models: list[str]
    prices: list[ModelPrice]
    rate_limit_rpm: int | None
    tpm_limit: int | None
    concurrency_limit: int | None
    monthly_budget: Decimal | None
    expires_at: datetime | None
    month: str
    spent: Decimal
    remaining: Decimal | None
    usage_30d: UsageTotals


async def self_key(request: Request) -> Response:
    services: Services = request.app.state.services
    record = await services.proxy.authenticate(request.headers.get("authorization"))
    async with services.sessions() as session:
        row = await session.get(ApiKey, record.id)
    assert row is not None  # authenticated a moment ago
    now = datetime.now(UTC)
    start = month_start(now)
    spent = await services.usage.month_spend(record.id, start)
    totals = await RollupService(services.engine).totals(now - timedelta(days=30), now, record.id)
    budget = row.monthly_budget
    catalog = await services.proxy.catalog.all()
    usable = sorted(
        (a for a in catalog if a.enabled and record.may_use(a.alias)), key=lambda a: a.alias
    )
    body = SelfKey(
        id=str(row.id),
        name=row.name,
        key_prefix=row.key_prefix,
        owner=row.owner,
        app=row.app,
        allowed_models=row.allowed_models,
        models=[a.alias for a in usable],
        prices=[
            ModelPrice(
                alias=a.alias,
                input_price_per_mtok=a.input_price_per_mtok,
                output_price_per_mtok=a.output_price_per_mtok,
            )
            for a in usable
        ],
        rate_limit_rpm=row.rate_limit_rpm,
        tpm_limit=row.tpm_limit,
        concurrency_limit=row.concurrency_limit,
        monthly_budget=budget,
        expires_at=row.expires_at,
        month=f"{start:%Y-%m}",
        spent=spent,
        remaining=None if budget is None else max(Decimal(0), budget - spent),
        usage_30d=UsageTotals(
            requests=totals.requests,
            errors=totals.errors,
            prompt_tokens=totals.prompt_tokens,
            completion_tokens=totals.completion_tokens,
            cost=totals.cost,
            error_rate=totals.error_rate,
        ),
    )
    return Response(body.model_dump_json(), media_type="application/json")


routes: list[BaseRoute] = [Route("/v1/key", self_key, methods=["GET"])]
