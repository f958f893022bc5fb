"""Postgres engine and the schema-at-head check."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

ALEMBIC_INI = Path(__file__).resolve().parents[3] / "alembic.ini"


class SchemaNotAtHead(RuntimeError):
    pass


def create_engine(dsn: str, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(dsn, pool_size=pool_size, max_overflow=20, pool_pre_ping=True)


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


async def check_schema(engine: AsyncEngine) -> None:
    head, current = head_revision(), await current_revision(engine)
    if current != head:
        raise SchemaNotAtHead(
            f"database schema is at {current or 'nothing'}, this gateway needs {head}; "
            "run `tollgate-gateway migrate` (or `make migrate`) first"
        )
