"""The admin API: viewers read, admins write."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Query, Request

from tollgate_gateway.admin import schemas, service
from tollgate_gateway.admin.security import issue_token
from tollgate_gateway.dependencies import AdminUser, CurrentUser, ServicesDep, SessionDep
from tollgate_gateway.errors import ApiError
from tollgate_gateway.limits.service import month_start
from tollgate_gateway.usage.service import GroupBy
from tollgate_schema.orm import ApiKey, App, Model, User

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post("/login")
async def login(data: schemas.LoginIn, request: Request, services: ServicesDep) -> schemas.TokenOut:
    # No session dependency: a login must not hold a database connection while it hashes.
    address = request.client.host if request.client else "unknown"
    await services.logins.admit(address, data.email)
    user = await service.authenticate(services.sessions, services.logins, data.email, data.password)
    if user is None:
        await services.logins.failed(address, data.email)
        await services.login_audit.failure(data.email, address)
        raise ApiError(401, "Wrong email or password.", code="invalid_credentials")
    await services.login_audit.success(user.email, user.id, address)
    ttl = services.settings.jwt_ttl_seconds
    secret = services.settings.jwt_secret.get_secret_value()
    token = issue_token(secret, user.id, user.role, ttl, user.password_hash)
    return schemas.TokenOut(access_token=token, expires_in=ttl)


@router.get("/me")
async def me(user: CurrentUser) -> schemas.UserOut:
    return schemas.UserOut.model_validate(user)


# -- keys ----------------------------------------------------------------------------------
@router.post("/keys", status_code=201)
async def create_key(
    data: schemas.KeyCreate, _: AdminUser, session: SessionDep, services: ServicesDep
) -> schemas.KeyCreated:
    pepper = services.settings.key_pepper.get_secret_value().encode()
    row, plaintext = await service.create_key(session, data, pepper)
    return schemas.KeyCreated(**schemas.KeyOut.model_validate(row).model_dump(), key=plaintext)


@router.get("/keys")
async def list_keys(_: CurrentUser, session: SessionDep) -> list[schemas.KeyOut]:
    rows = await service.list_all(session, ApiKey, ApiKey.created_at)
    return [schemas.KeyOut.model_validate(r) for r in rows]


@router.get("/keys/{key_id}")
async def get_key(key_id: uuid.UUID, _: CurrentUser, session: SessionDep) -> schemas.KeyOut:
    return schemas.KeyOut.model_validate(await service.get_key(session, key_id))


@router.patch("/keys/{key_id}")
async def update_key(
    key_id: uuid.UUID, data: schemas.KeyUpdate, _: AdminUser, session: SessionDep
) -> schemas.KeyOut:
    return schemas.KeyOut.model_validate(await service.update_key(session, key_id, data))


@router.delete("/keys/{key_id}", status_code=204)
async def revoke_key(key_id: uuid.UUID, _: AdminUser, session: SessionDep) -> None:
    """Revoke the key (its row stays, with `revoked_at`, for usage and audit): 204 like every
    DELETE of the admin API."""
    await service.revoke_key(session, key_id)


@router.post("/keys/{key_id}/release")
async def release_key(key_id: uuid.UUID, _: AdminUser, session: SessionDep) -> schemas.KeyOut:
    """Release a key managed by the operator: afterwards the admin API may edit or revoke it."""
    return schemas.KeyOut.model_validate(await service.release(session, ApiKey, key_id))


@router.get("/keys/{key_id}/budget")
async def key_budget(
    key_id: uuid.UUID, _: CurrentUser, session: SessionDep, services: ServicesDep
) -> schemas.KeyBudget:
    row = await service.get_key(session, key_id)
    start = month_start(datetime.now(UTC))
    spent = await services.usage.month_spend(row.id, start)
    remaining = None if row.monthly_budget is None else max(Decimal(0), row.monthly_budget - spent)
    return schemas.KeyBudget(
        id=row.id,
        month=f"{start:%Y-%m}",
        monthly_budget=row.monthly_budget,
        spent=spent,
        remaining=remaining,
    )


# -- models --------------------------------------------------------------------------------
@router.post("/models", status_code=201)
async def create_model(
    data: schemas.ModelIn, _: AdminUser, session: SessionDep
) -> schemas.ModelOut:
    return schemas.ModelOut.model_validate(await service.create_model(session, data))


@router.get("/models")
async def list_models(_: CurrentUser, session: SessionDep) -> list[schemas.ModelOut]:
    rows = await service.list_all(session, Model, Model.alias)
    return [schemas.ModelOut.model_validate(r) for r in rows]


@router.patch("/models/{model_id}")
async def update_model(
    model_id: uuid.UUID, data: schemas.ModelUpdate, _: AdminUser, session: SessionDep
) -> schemas.ModelOut:
    return schemas.ModelOut.model_validate(await service.update_model(session, model_id, data))


@router.post("/models/{model_id}/release")
async def release_model(model_id: uuid.UUID, _: AdminUser, session: SessionDep) -> schemas.ModelOut:
    """Release an alias managed by the operator: afterwards the admin API may edit or delete it."""
    return schemas.ModelOut.model_validate(await service.release(session, Model, model_id))


@router.delete("/models/{model_id}", status_code=204)
async def delete_model(model_id: uuid.UUID, _: AdminUser, session: SessionDep) -> None:
    await service.delete_model(session, model_id)


@router.get("/pools/queue")
async def pool_queues(_: CurrentUser, services: ServicesDep) -> list[schemas.PoolQueueOut]:
    """The pool queues this gateway has seen requests for (README "When a pool is full")."""
    pools = services.proxy.pools
    if pools is None:
        return []
    await pools.refresh()
    return [schemas.PoolQueueOut(**q) for q in pools.snapshot()]


# -- users ---------------------------------------------------------------------------------
@router.post("/users", status_code=201)
async def create_user(data: schemas.UserIn, _: AdminUser, session: SessionDep) -> schemas.UserOut:
    return schemas.UserOut.model_validate(await service.create_user(session, data))


@router.get("/users")
async def list_users(_: CurrentUser, session: SessionDep) -> list[schemas.UserOut]:
    return [
        schemas.UserOut.model_validate(u) for u in await service.list_all(session, User, User.email)
    ]


@router.patch("/users/{user_id}")
async def update_user(
    user_id: uuid.UUID, data: schemas.UserUpdate, actor: AdminUser, session: SessionDep
) -> schemas.UserOut:
    return schemas.UserOut.model_validate(await service.update_user(session, user_id, data, actor))


@router.delete("/users/{user_id}", status_code=204)
async def delete_user(user_id: uuid.UUID, actor: AdminUser, session: SessionDep) -> None:
    await service.delete_user(session, user_id, actor)


# -- apps ----------------------------------------------------------------------------------
@router.post("/apps", status_code=201)
async def create_app(data: schemas.AppIn, _: AdminUser, session: SessionDep) -> schemas.AppOut:
    return schemas.AppOut.model_validate(await service.create_app(session, data))


@router.get("/apps")
async def list_apps(_: CurrentUser, session: SessionDep) -> list[schemas.AppOut]:
    return [
        schemas.AppOut.model_validate(a) for a in await service.list_all(session, App, App.name)
    ]


@router.delete("/apps/{app_id}", status_code=204)
async def delete_app(app_id: uuid.UUID, _: AdminUser, session: SessionDep) -> None:
    await service.delete_app(session, app_id)


# -- usage ---------------------------------------------------------------------------------
@router.get("/usage")
async def usage(
    _: CurrentUser,
    services: ServicesDep,
    group_by: Annotated[GroupBy, Query(description="Rows per key, alias or app.")] = "key",
    since: Annotated[
        datetime | None, Query(description="Start (with a timezone); default: `until` - 24 h.")
    ] = None,
    until: Annotated[datetime | None, Query(description="End (exclusive); default: now.")] = None,
) -> schemas.UsageSummary:
    """Usage per key, alias or app over a window (the last 24 hours by default); refused
    requests count in `requests`, `errors` and `refused`, with no tokens and no cost."""
    until = until or datetime.now(UTC)
    since = since or until - timedelta(days=1)
    if since.tzinfo is None or until.tzinfo is None:
        raise ApiError(
            400, "since and until need a timezone, e.g. 2026-11-01T00:00:00Z", param="since"
        )
    rows = await services.usage.summary(group_by, since, until)
    return schemas.UsageSummary(
        since=since,
        until=until,
        group_by=group_by,
        rows=[schemas.UsageRowOut.model_validate(r) for r in rows],
    )
