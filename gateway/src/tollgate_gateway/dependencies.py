"""FastAPI dependencies, defined once as Annotated aliases."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from tollgate_gateway.admin.security import read_token, token_current
from tollgate_gateway.audit.recorder import set_actor
from tollgate_gateway.config import Settings
from tollgate_gateway.errors import ApiError
from tollgate_gateway.services import Services
from tollgate_schema.orm import User


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_settings(services: ServicesDep) -> Settings:
    return services.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_session(services: ServicesDep) -> AsyncIterator[AsyncSession]:
    async with services.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, code="invalid_token", headers={"www-authenticate": "Bearer"})


async def current_user(request: Request, services: ServicesDep, session: SessionDep) -> User:
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("Log in at POST /admin/login and send 'Authorization: Bearer <token>'.")
    claims = read_token(services.settings.jwt_secret.get_secret_value(), token.strip())
    if claims is None:
        raise _unauthorized("The access token is invalid or expired; log in again.")
    try:
        user_id = uuid.UUID(str(claims["sub"]))
    except ValueError:
        # Correctly signed but not one of ours (another service sharing the secret?).
        raise _unauthorized("The access token does not name a user; log in again.") from None
    user = await session.get(User, user_id)
    if user is None or user.disabled:
        raise _unauthorized("This account no longer exists or is disabled.")
    if not token_current(claims, user.password_hash):
        raise _unauthorized("The password changed since this token was issued; log in again.")
    set_actor(session, f"user:{user.email}", request.scope.get("state", {}).get("request_id"))
    return user


CurrentUser = Annotated[User, Depends(current_user)]


async def admin_user(user: CurrentUser) -> User:
    if user.role != "admin":
        raise ApiError(403, "This needs the admin role; viewers can only read.", code="forbidden")
    return user


AdminUser = Annotated[User, Depends(admin_user)]
