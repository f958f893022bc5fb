"""Postgres DSNs: the one spelling settings take (``postgresql://…``) into what each driver
layer wants."""

from __future__ import annotations


def to_sqlalchemy_dsn(dsn: str) -> str:
    """``postgresql://…`` (or ``postgres://…``) as SQLAlchemy's psycopg 3 URL."""
    for prefix in ("postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn[len(prefix) :]
    return dsn


def to_libpq_dsn(dsn: str) -> str:
    """A SQLAlchemy URL (or ``postgres://…``) as libpq, psycopg and asyncpg take it."""
    for prefix in ("postgresql+psycopg://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql://" + dsn[len(prefix) :]
    return dsn
