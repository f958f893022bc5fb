"""Postgres engine and the schema-at-head check."""

from __future__ import annotations

import functools
import logging
import os
from enum import StrEnum
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# The Alembic files live beside the package source (gateway/alembic.ini); an image that
# installs the package elsewhere points TOLLGATE_ALEMBIC_INI at them.
ALEMBIC_INI = Path(
    os.environ.get("TOLLGATE_ALEMBIC_INI") or Path(__file__).resolve().parents[3] / "alembic.ini"
)
log = logging.getLogger(__name__)


class SchemaNotAtHead(RuntimeError):
    pass


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


async def check_schema(engine: AsyncEngine) -> None:
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
