"""Admin operations on users, apps, keys and model aliases."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tollgate_gateway.admin import schemas
from tollgate_gateway.admin.logins import LoginGuard
from tollgate_gateway.admin.security import DUMMY_HASH, hash_password
from tollgate_gateway.errors import ApiError
from tollgate_schema.keys import display_prefix, hash_key, mint_key
from tollgate_schema.orm import ApiKey, App, Base, Model, User

T = TypeVar("T", bound=Base)


def not_found(what: str) -> ApiError:
    return ApiError(404, f"{what} not found.", code="not_found")


def conflict(message: str) -> ApiError:
    return ApiError(409, message, code="conflict")


def _guard_managed(row: ApiKey | Model) -> None:
    if row.managed_by:
        raise conflict(
            f"This object is managed by {row.managed_by}; change the Kubernetes resource instead "
            "(the operator would undo an edit made here). If that resource is gone for good, "
            "POST .../release takes the object over (the operator also releases orphans itself "
            "after its grace)."
        )


async def release(session: AsyncSession, model: type[ApiKey] | type[Model], id_: uuid.UUID) -> Any:
    """Take a managed key or alias over from the operator (its resource is gone, e.g. after an
    etcd restore): it becomes an ordinary row the admin API may edit or delete. Nothing else
    changes; releasing an unmanaged row is a no-op."""
    row = await _get(session, model, id_, "Key" if model is ApiKey else "Model")
    if row.managed_by is not None:
        row.managed_by = None
        await session.commit()
    return row


async def _get(session: AsyncSession, model: type[T], id_: uuid.UUID, what: str) -> T:
    row = await session.get(model, id_)
    if row is None:
        raise not_found(what)
    return row


async def _commit(session: AsyncSession, duplicate: str) -> None:
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise conflict(duplicate) from exc


# -- users ---------------------------------------------------------------------------------
async def authenticate(
    sessions: async_sessionmaker[AsyncSession], guard: LoginGuard, email: str, password: str
) -> User | None:
    """The user for these credentials, or None. The database connection is given back
    before the (deliberately slow) password check, which runs on the login executor."""
    async with sessions() as session:
        user = (
            await session.execute(select(User).where(func.lower(User.email) == email.lower()))
        ).scalar_one_or_none()
    if user is None:
        await guard.verify(DUMMY_HASH, password)  # both paths cost the same
        return None
    valid = await guard.verify(user.password_hash, password)
    if user.disabled or not valid:
        return None
    return user


async def ensure_admin(session: AsyncSession, email: str, password: str) -> bool:
    """Create the first admin if that email has no account yet; True when created."""
    exists = (
        await session.execute(select(User.id).where(func.lower(User.email) == email.lower()))
    ).first()
    if exists:
        return False
    password_hash = await asyncio.to_thread(hash_password, password)
    session.add(User(email=email.lower(), password_hash=password_hash, role="admin"))
    await _commit(session, "admin exists")
    return True


async def create_user(session: AsyncSession, data: schemas.UserIn) -> User:
    password_hash = await asyncio.to_thread(hash_password, data.password)
    user = User(email=str(data.email).lower(), password_hash=password_hash, role=data.role)
    session.add(user)
    await _commit(session, f"A user with email {data.email} already exists.")
    return user


async def update_user(
    session: AsyncSession, id_: uuid.UUID, data: schemas.UserUpdate, actor: User
) -> User:
    user = await _get(session, User, id_, "User")
    if data.password is not None:
        user.password_hash = await asyncio.to_thread(hash_password, data.password)
    if data.role is not None:
        user.role = data.role
    if data.disabled is not None:
        user.disabled = data.disabled
    if user.id == actor.id and (user.role != "admin" or user.disabled):
        raise conflict("You cannot demote or disable yourself.")
    await session.commit()
    return user


async def delete_user(session: AsyncSession, id_: uuid.UUID, actor: User) -> None:
    user = await _get(session, User, id_, "User")
    if user.id == actor.id:
        raise conflict("You cannot delete yourself.")
    await session.delete(user)
    await session.commit()


# -- apps ----------------------------------------------------------------------------------
async def create_app(session: AsyncSession, data: schemas.AppIn) -> App:
    app = App(**data.model_dump())
    session.add(app)
    await _commit(session, f"An app named {data.name} already exists.")
    return app


async def delete_app(session: AsyncSession, id_: uuid.UUID) -> None:
    await session.delete(await _get(session, App, id_, "App"))
    await session.commit()


# -- keys ----------------------------------------------------------------------------------
async def create_key(
    session: AsyncSession, data: schemas.KeyCreate, pepper: bytes
) -> tuple[ApiKey, str]:
    plaintext = mint_key()
    fields: dict[str, Any] = data.model_dump()
    row = ApiKey(
        **fields, key_hash=hash_key(plaintext, pepper), key_prefix=display_prefix(plaintext)
    )
    session.add(row)
    await _commit(session, "Key collision; try again.")
    return row, plaintext


async def update_key(session: AsyncSession, id_: uuid.UUID, data: schemas.KeyUpdate) -> ApiKey:
    row = await _get(session, ApiKey, id_, "Key")
    _guard_managed(row)
    if row.revoked_at is not None:
        raise conflict("This key is revoked; create a new one.")
    for name, value in data.model_dump(exclude_unset=True).items():
        setattr(row, name, value)
    await session.commit()
    return row


async def revoke_key(session: AsyncSession, id_: uuid.UUID) -> ApiKey:
    row = await _get(session, ApiKey, id_, "Key")
    _guard_managed(row)
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        await session.commit()
    return row


async def get_key(session: AsyncSession, id_: uuid.UUID) -> ApiKey:
    return await _get(session, ApiKey, id_, "Key")


# -- models --------------------------------------------------------------------------------
async def create_model(session: AsyncSession, data: schemas.ModelIn) -> Model:
    values = data.model_dump()
    policy = data.request_policy
    values["request_policy"] = None if policy is None else policy.to_row()
    row = Model(**values)
    session.add(row)
    await _commit(session, f"The alias {data.alias} already exists.")
    return row


async def update_model(session: AsyncSession, id_: uuid.UUID, data: schemas.ModelUpdate) -> Model:
    row = await _get(session, Model, id_, "Model")
    _guard_managed(row)
    for name, value in data.model_dump(exclude_unset=True).items():
        if name == "request_policy":  # replaced whole (null: removed), nulls left out
            value = None if data.request_policy is None else data.request_policy.to_row()
        setattr(row, name, value)
    await session.commit()
    return row


async def delete_model(session: AsyncSession, id_: uuid.UUID) -> None:
    row = await _get(session, Model, id_, "Model")
    _guard_managed(row)
    await session.delete(row)
    await session.commit()


async def list_all(session: AsyncSession, model: type[T], order: Any) -> list[T]:
    return list((await session.execute(select(model).order_by(order))).scalars().all())
