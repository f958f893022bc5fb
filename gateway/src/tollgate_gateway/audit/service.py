"""Reading and pruning the audit log; login outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tollgate_schema import audit as events
from tollgate_schema.orm import AuditEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


async def page(
    session: AsyncSession, where: AuditFilter, limit: int, before_id: int | None
) -> list[AuditEvent]:
    """Newest first, ``limit`` rows older than ``before_id`` (keyset paging on the id)."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    if where.actor:
        query = query.where(AuditEvent.actor == where.actor)
    if where.action:
        query = query.where(AuditEvent.action == where.action)
    if where.target_type:
        query = query.where(AuditEvent.target_type == where.target_type)
    if where.target_id:
        query = query.where(AuditEvent.target_id == where.target_id)
    if where.since:
        query = query.where(AuditEvent.ts >= where.since)
    if where.until:
        query = query.where(AuditEvent.ts < where.until)
    return list((await session.execute(query)).scalars().all())


class LoginRecorder:
    """Every successful login gets a row; failures at most one row per email and window,
    carrying how many failures it stands for (a password-guessing flood must not become
    a flood of writes)."""

    def __init__(self, engine: AsyncEngine, window_seconds: float = 60.0) -> None:
        self._engine = engine
        self._window = window_seconds
        self._failures: dict[str, tuple[float, int]] = {}

    async def success(self, email: str, user_id: object, client: str | None) -> None:
        await self._write(
            events.row(
                actor=f"user:{email}",
                source="admin_api",
                action="user.login",
                kind="user",
                target_id=user_id,
                name=email,
                before=None,
                after={"client": client},
            )
        )

    async def failure(self, email: str, client: str | None) -> None:
        email = email.lower()[:320]
        now = time.monotonic()
        started, count = self._failures.get(email, (0.0, 0))
        if count and now - started < self._window:
            self._failures[email] = (started, count + 1)
            return
        if len(self._failures) > 10_000:
            self._failures.clear()
        self._failures[email] = (now, 1)
        await self._write(
            events.row(
                actor="anonymous",
                source="admin_api",
                action="user.login_failed",
                kind="user",
                target_id=None,
                name=email,
                before=None,
                after={"client": client, "failures_in_previous_window": count},
            )
        )

    async def _write(self, values: dict[str, object]) -> None:
        try:
            async with self._engine.begin() as conn:
                await conn.execute(insert(AuditEvent), [values])
        except Exception as exc:  # a login is answered even when its record cannot be
            log.warning("audit: login not recorded (%s)", type(exc).__name__)


class AuditPruner:
    """Deletes rows older than the retention, once an hour."""

    def __init__(self, engine: AsyncEngine, retention_days: int, interval: float = 3600) -> None:
        self._engine = engine
        self._retention = timedelta(days=retention_days)
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def prune(self) -> int:
        cutoff = datetime.now(UTC) - self._retention
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(AuditEvent).where(AuditEvent.ts < cutoff))
        return int(result.rowcount or 0)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-pruner")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                removed = await self.prune()
                if removed:
                    log.info("audit: pruned %d rows older than %s", removed, self._retention)
            except Exception as exc:
                log.warning("audit: pruning failed (%s); next try in an hour", type(exc).__name__)
            await asyncio.sleep(self._interval)
