"""Postgres adapter: rows of the gateway's ``api_keys`` and ``models`` tables.

The gateway owns the schema (its ORM and Alembic migrations); this module never creates
anything. Every write fires the gateway's NOTIFY trigger, so callers plan first and only
write rows that actually differ.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.elements import ColumnElement

from tollgate_operator.errors import Unavailable
from tollgate_schema import audit
from tollgate_schema.db import check_schema
from tollgate_schema.dsn import to_sqlalchemy_dsn
from tollgate_schema.orm import ApiKey, AuditEvent, Model

Row = dict[str, Any]

PREFIX = "operator:"  # managed_by of the rows this operator manages: operator:<ns>/<name>


@dataclass(frozen=True)
class ManagedRow:
    kind: str  # key or model
    id: Any
    name: str  # the key's name or the alias
    managed_by: str

    @property
    def resource(self) -> tuple[str, str] | None:
        """(namespace, name) of the resource named by ``managed_by``; None if malformed."""
        if not self.managed_by.startswith(PREFIX):
            return None
        namespace, _, name = self.managed_by[len(PREFIX) :].partition("/")
        return (namespace, name) if namespace and name else None


API_KEYS: Table = ApiKey.__table__  # type: ignore[assignment]
MODELS: Table = Model.__table__  # type: ignore[assignment]
AUDIT: Table = AuditEvent.__table__  # type: ignore[assignment]
KINDS = {"api_keys": "key", "models": "model"}


def audit_rows(
    kind: str, actor: str, rows: list[Row], plan: RowPlan, inserted: list[Row]
) -> list[Row]:
    """The audit rows of one applied plan: what changed, never a key hash."""
    by_id = {r["id"]: r for r in rows}
    live = any(r.get("revoked_at") is None for r in rows)
    out: list[Row] = []

    def add(action: str, target: Row, before: Row | None, after: Row | None) -> None:
        out.append(
            audit.row(
                actor=actor,
                source="operator",
                action=action,
                kind=kind,
                target_id=target.get("id"),
                name=audit.target_name(kind, target),
                before=before,
                after=after,
            )
        )

    for row_id in plan.deletes:
        old = by_id.get(row_id, {"id": row_id})
        add(f"{kind}.delete", old, audit.snapshot(old), None)
    for row_id, changes in plan.updates:
        old = by_id.get(row_id, {"id": row_id})
        before, after = audit.changed(audit.snapshot(old), audit.snapshot({**old, **changes}))
        secret = any(k in audit.SECRET_FIELDS for k in changes)
        if before or after or secret:
            add(
                audit.action_for(kind, "update", before, after, secret),
                {**old, **changes},
                before,
                after,
            )
    for new in inserted:
        action = f"{kind}.rotate" if kind == "key" and live else f"{kind}.create"
        add(action, new, None, audit.snapshot(new))
    return out


@dataclass
class RowPlan:
    """What to write, decided from the rows as they are (inside the same transaction)."""

    inserts: list[Row] = field(default_factory=list)
    updates: list[tuple[uuid.UUID, Row]] = field(default_factory=list)
    deletes: list[uuid.UUID] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Results the planner wants to hand back to its caller.
    current_id: uuid.UUID | None = None
    in_grace: list[datetime] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.inserts or self.updates or self.deletes)


class Duplicate(Exception):
    """A unique column (key hash, alias) already holds this value in another row."""


Planner = Callable[[list[Row]], RowPlan]

_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout, OSError, asyncio.TimeoutError)


class Database:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @classmethod
    def connect(cls, dsn: str, connect_timeout: float = 5.0) -> Database:
        engine = create_async_engine(
            to_sqlalchemy_dsn(dsn),
            pool_size=5,
            max_overflow=5,
            pool_pre_ping=True,
            connect_args={"connect_timeout": max(1, int(connect_timeout))},
        )
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    async def check_schema(self) -> None:
        """Raise SchemaNotAtHead unless the gateway's migrations are at head."""
        await check_schema(self.engine)

    async def _planned(
        self, table: Table, where: ColumnElement[bool], planner: Planner, actor: str
    ) -> RowPlan:
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(select(table).where(where).with_for_update())
                rows = [dict(r._mapping) for r in result.all()]
                plan = planner(rows)
                for row_id in plan.deletes:
                    await conn.execute(delete(table).where(table.c.id == row_id))
                for row_id, changes in plan.updates:
                    await conn.execute(update(table).where(table.c.id == row_id).values(**changes))
                inserted: list[Row] = []
                for row in plan.inserts:
                    new = await conn.execute(insert(table).values(**row).returning(table))
                    inserted.append(dict(new.one()._mapping))
                trail = audit_rows(KINDS[table.name], actor, rows, plan, inserted)
                if trail:
                    await conn.execute(insert(AUDIT), trail)
            return plan
        except IntegrityError as exc:
            raise Duplicate(str(exc.orig).splitlines()[0]) from exc
        except _UNAVAILABLE as exc:
            raise Unavailable("postgres", type(exc).__name__) from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise Unavailable("postgres", "connection lost") from exc
            raise

    async def plan_keys(self, managed_by: str, planner: Planner) -> RowPlan:
        """Plan and apply changes to the api_keys rows of one ApiKey resource."""
        return await self._planned(
            API_KEYS, API_KEYS.c.managed_by == managed_by, planner, managed_by
        )

    async def plan_models(self, alias: str, managed_by: str, planner: Planner) -> RowPlan:
        """Plan and apply changes to one alias's row, and any row this resource owns."""
        where = (MODELS.c.alias == alias) | (MODELS.c.managed_by == managed_by)
        return await self._planned(MODELS, where, planner, managed_by)

    async def revoke_keys(self, managed_by: str, now: datetime) -> int:
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(
                    update(API_KEYS)
                    .where(API_KEYS.c.managed_by == managed_by, API_KEYS.c.revoked_at.is_(None))
                    .values(revoked_at=now)
                    .returning(API_KEYS.c.id, API_KEYS.c.name)
                )
                revoked = [dict(r._mapping) for r in result.all()]
                if revoked:
                    after = {"revoked_at": audit.jsonable(now)}
                    trail = [
                        audit.row(
                            actor=managed_by,
                            source="operator",
                            action="key.revoke",
                            kind="key",
                            target_id=r["id"],
                            name=r["name"],
                            before={"revoked_at": None},
                            after=after,
                        )
                        for r in revoked
                    ]
                    await conn.execute(insert(AUDIT), trail)
                return len(revoked)
        except _UNAVAILABLE as exc:
            raise Unavailable("postgres", type(exc).__name__) from exc

    async def delete_models(self, managed_by: str) -> int:
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(
                    delete(MODELS).where(MODELS.c.managed_by == managed_by).returning(MODELS)
                )
                gone = [dict(r._mapping) for r in result.all()]
                if gone:
                    trail = [
                        audit.row(
                            actor=managed_by,
                            source="operator",
                            action="model.delete",
                            kind="model",
                            target_id=r["id"],
                            name=r["alias"],
                            before=audit.snapshot(r),
                            after=None,
                        )
                        for r in gone
                    ]
                    await conn.execute(insert(AUDIT), trail)
                return len(gone)
        except _UNAVAILABLE as exc:
            raise Unavailable("postgres", type(exc).__name__) from exc

    # -- orphans -------------------------------------------------------------------------
    async def live_managed_rows(self) -> list[ManagedRow]:
        """Unrevoked keys and enabled aliases managed by an operator resource."""
        keys = select(API_KEYS.c.id, API_KEYS.c.name, API_KEYS.c.managed_by).where(
            API_KEYS.c.managed_by.startswith(PREFIX), API_KEYS.c.revoked_at.is_(None)
        )
        models = select(MODELS.c.id, MODELS.c.alias, MODELS.c.managed_by).where(
            MODELS.c.managed_by.startswith(PREFIX), MODELS.c.enabled | MODELS.c.pending
        )
        try:
            async with self.engine.connect() as conn:
                rows = [ManagedRow("key", *r) for r in (await conn.execute(keys)).all()]
                rows += [ManagedRow("model", *r) for r in (await conn.execute(models)).all()]
        except _UNAVAILABLE as exc:
            raise Unavailable("postgres", type(exc).__name__) from exc
        return rows

    async def release_orphan(self, row: ManagedRow) -> bool:
        """Revoke the key or disable the alias if it is still live and managed as it was (the
        resource may have been re-created meanwhile); with its audit row. True if changed."""
        table = API_KEYS if row.kind == "key" else MODELS
        live: ColumnElement[bool]
        if row.kind == "key":
            changes: Row = {"revoked_at": datetime.now(UTC)}
            live = API_KEYS.c.revoked_at.is_(None)
            before: Row = {"revoked_at": None}
            action = "key.revoke"
        else:
            changes = {"enabled": False, "pending": False}
            live = MODELS.c.enabled | MODELS.c.pending
            before = {"enabled": True}
            action = "model.update"
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(
                    update(table)
                    .where(table.c.id == row.id, table.c.managed_by == row.managed_by, live)
                    .values(**changes)
                )
                if not result.rowcount:
                    return False
                after = {k: audit.jsonable(v) for k, v in changes.items()}
                await conn.execute(
                    insert(AUDIT),
                    [
                        audit.row(
                            actor=row.managed_by,
                            source="operator",
                            action=action,
                            kind=row.kind,
                            target_id=row.id,
                            name=row.name,
                            before=before,
                            after=after,
                        )
                    ],
                )
            return True
        except _UNAVAILABLE as exc:
            raise Unavailable("postgres", type(exc).__name__) from exc
