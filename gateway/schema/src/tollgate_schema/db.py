"""Postgres engine, the schema-at-head check and the one wait for the database and its schema.

The gateway (at start), the operator (at start) and the chart's init containers
(`tollgate-schema wait`) all wait through `wait_for_schema`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from enum import StrEnum
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# The Alembic files are this package's data (alembic.ini beside this module, migrations/);
# TOLLGATE_ALEMBIC_INI points elsewhere (a test of other migrations, say).
ALEMBIC_INI = Path(
    os.environ.get("TOLLGATE_ALEMBIC_INI") or Path(__file__).with_name("alembic.ini")
)
log = logging.getLogger(__name__)


class SchemaNotAtHead(RuntimeError):
    """The database's schema is older than this package's migrations."""


def create_engine(
    dsn: str,
    pool_size: int = 10,
    max_overflow: int = 20,
    pool_timeout: float = 30,
    connect_timeout: float = 10,
) -> AsyncEngine:
    return create_async_engine(
        dsn,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_pre_ping=True,
        # an unreachable database fails a request in seconds rather than hanging it
        connect_args={"connect_timeout": max(1, int(connect_timeout))},
    )


def alembic_config(dsn: str | None = None) -> Config:
    config = Config(str(ALEMBIC_INI))
    if dsn:
        config.set_main_option("sqlalchemy.url", dsn.replace("%", "%%"))
    return config


def upgrade(dsn: str) -> None:
    """Apply every migration to the database at `dsn` (a SQLAlchemy URL)."""
    from alembic import command

    command.upgrade(alembic_config(dsn), "head")


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        exists = (await conn.execute(text("SELECT to_regclass('alembic_version')"))).scalar()
        if exists is None:
            return None
        value = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        return str(value) if value is not None else None


class SchemaState(StrEnum):
    CURRENT = "current"
    BEHIND = "behind"  # migrations to run: refuse to serve
    AHEAD = "ahead"  # a newer gateway migrated (upgrade in progress, or a rollback)


def schema_state(current: str | None) -> SchemaState:
    """Where the database stands against this gateway's migrations.

    Migrations are expand-then-contract, so a gateway keeps serving on a newer schema
    (during `helm upgrade` old pods run after the pre-upgrade migration; after
    `helm rollback` old pods run on the migrated database).
    """
    head, known = _revisions()
    if current == head:
        return SchemaState.CURRENT
    if current is None:
        return SchemaState.BEHIND
    return SchemaState.BEHIND if current in known else SchemaState.AHEAD


@functools.cache
def _revisions() -> tuple[str | None, frozenset[str]]:
    script = ScriptDirectory.from_config(alembic_config())
    return script.get_current_head(), frozenset(r.revision for r in script.walk_revisions())


async def check_schema(engine: AsyncEngine) -> SchemaState:
    """The schema's state once (CURRENT or AHEAD); SchemaNotAtHead when it is behind."""
    current = await current_revision(engine)
    state = schema_state(current)
    if state is SchemaState.BEHIND:
        raise SchemaNotAtHead(
            f"database schema is at {current or 'nothing'}, this gateway needs "
            f"{head_revision()}; run `tollgate-gateway migrate` (or `make migrate`) first"
        )
    if state is SchemaState.AHEAD:
        log.warning(
            "database schema %s is newer than this gateway's %s; serving (migrations "
            "are backward compatible)",
            current,
            head_revision(),
        )
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def ping(engine: AsyncEngine) -> None:
    """One round trip: raises when the database does not answer."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def wait_for_schema(
    engine: AsyncEngine,
    within: float,
    *,
    schema: bool = True,
    wait_for_migration: bool = True,
    interval: float = 2.0,
    logger: logging.Logger = log,
) -> SchemaState:
    """Wait until the database answers and (unless ``schema=False``) its schema is at, or
    past, this package's head; the schema's state.

    Retries every ``interval`` seconds for ``within`` seconds (0: one attempt), saying why
    every fifth attempt. A schema that is behind raises `SchemaNotAtHead`: at once unless
    ``wait_for_migration`` (a migration Job may be running), else after the timeout. A
    database that does not answer in time re-raises its last error.
    """
    deadline = time.monotonic() + within
    attempt = 0
    while True:
        attempt += 1
        try:
            if not schema:
                await ping(engine)
                return SchemaState.CURRENT
            return await check_schema(engine)
        except SchemaNotAtHead as exc:
            if not wait_for_migration or time.monotonic() >= deadline:
                raise
            what, reason = "the migration", _first_line(exc)
        except Exception as exc:  # the database is not reachable (yet)
            if time.monotonic() >= deadline:
                raise
            what, reason = "the database", _first_line(exc)
        if attempt % 5 == 1:
            logger.warning("waiting for %s: %s", what, reason)
        await asyncio.sleep(interval)
