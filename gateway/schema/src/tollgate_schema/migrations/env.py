"""Alembic environment of the schema the gateway and the operator share."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool

from tollgate_schema.dsn import to_sqlalchemy_dsn
from tollgate_schema.orm import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    # As the gateway's settings read it (`tollgate-gateway migrate` passes its own URL).
    dsn = os.environ.get("POSTGRES_DSN") or os.environ.get("TOLLGATE_POSTGRES_DSN")
    return to_sqlalchemy_dsn(dsn or "postgresql://postgres@127.0.0.1:5432/tollgate")


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
