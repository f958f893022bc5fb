"""``GET /admin/audit``: read-only for every admin-API user (viewers included)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from tollgate_gateway.audit.service import AuditFilter, page
from tollgate_gateway.dependencies import CurrentUser, SessionDep
from tollgate_gateway.errors import ApiError

router = APIRouter(prefix="/admin", tags=["admin"])


class AuditEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    ts: datetime
    actor: str = Field(examples=["user:admin@example.com", "operator:team-a/app-key"])
    source: str = Field(examples=["admin_api", "operator", "system"])
    action: str = Field(examples=["key.create", "key.revoke", "model.update", "user.login"])
    target_type: str
    target_id: str | None
    target_name: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None


class AuditPage(BaseModel):
    events: list[AuditEventOut]
    next_before_id: int | None = Field(
        description="Pass as before_id for the next (older) page; null on the last page."
    )


@router.get("/audit")
async def audit(
    _: CurrentUser,
    session: SessionDep,
    actor: Annotated[str | None, Query(max_length=320)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    target_type: Annotated[str | None, Query(max_length=32)] = None,
    target_id: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[datetime | None, Query()] = None,
    until: Annotated[datetime | None, Query()] = None,
    before_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditPage:
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise ApiError(400, f"{name} needs a timezone, e.g. 2026-11-01T00:00:00Z", param=name)
    where = AuditFilter(actor, action, target_type, target_id, since, until)
    rows = await page(session, where, limit, before_id)
    return AuditPage(
        events=[AuditEventOut.model_validate(r) for r in rows],
        next_before_id=rows[-1].id if len(rows) == limit else None,
    )
