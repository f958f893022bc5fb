"""The one wait for the database and its schema, in process against a real PostgreSQL, and
proof that the chart, the operator and the gateway all go through it."""

from __future__ import annotations

import ast
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollgate_dev.proc import free_port
from tollgate_dev.servers.backing import LocalPostgres
from tollgate_schema.db import (
    SchemaNotAtHead,
    SchemaState,
    create_engine,
    upgrade,
    wait_for_schema,
)
from tollgate_schema.dsn import to_libpq_dsn, to_sqlalchemy_dsn

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def empty_dsn(postgres: LocalPostgres) -> Iterator[str]:
    name = f"wait_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres.dsn.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
async def empty_db(empty_dsn: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(to_sqlalchemy_dsn(empty_dsn), pool_size=1)
    yield engine
    await engine.dispose()


def test_dsn_spellings_round_trip() -> None:
    dsn = "postgresql://u:p@h:5432/db"
    assert to_sqlalchemy_dsn(dsn) == "postgresql+psycopg://u:p@h:5432/db"
    assert to_sqlalchemy_dsn("postgres://h/db") == "postgresql+psycopg://h/db"
    assert to_libpq_dsn(to_sqlalchemy_dsn(dsn)) == dsn
    assert to_libpq_dsn("postgres://h/db") == "postgresql://h/db"


async def test_a_schema_behind_refuses_at_once_unless_told_to_wait(
    empty_db: AsyncEngine,
) -> None:
    started = time.monotonic()
    with pytest.raises(SchemaNotAtHead, match="database schema is at nothing"):
        await wait_for_schema(empty_db, 30, wait_for_migration=False)
    assert time.monotonic() - started < 10  # not the 30 s: no waiting for a migration
    with pytest.raises(SchemaNotAtHead):
        await wait_for_schema(empty_db, 0.3, interval=0.1)


async def test_the_database_alone_is_enough_without_the_schema(empty_db: AsyncEngine) -> None:
    assert await wait_for_schema(empty_db, 0, schema=False) is SchemaState.CURRENT


async def test_a_migrated_schema_is_current(empty_dsn: str, empty_db: AsyncEngine) -> None:
    upgrade(to_sqlalchemy_dsn(empty_dsn))
    assert await wait_for_schema(empty_db, 0) is SchemaState.CURRENT


async def test_an_unreachable_database_raises_its_own_error_after_the_wait() -> None:
    engine = create_engine(
        f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x", pool_size=1, connect_timeout=1
    )
    try:
        with pytest.raises(OperationalError, match=r"127\.0\.0\.1"):
            await wait_for_schema(engine, 0.5, interval=0.1)
    finally:
        await engine.dispose()


def _calls(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return names


def test_the_chart_the_operator_and_the_gateway_wait_through_the_same_code() -> None:
    for template in ("gateway/deployment.yaml", "operator/deployment.yaml"):
        text = (REPO / "charts/tollgate/templates" / template).read_text()
        assert 'command: ["tollgate-schema", "wait-for-schema"]' in text, template
    job = (REPO / "charts/tollgate/templates/migration-job.yaml").read_text()
    assert 'command: ["tollgate-schema", "wait-for-database"]' in job
    assert not (REPO / "charts/tollgate/files").exists()
    assert "wait_for_schema" in _calls(REPO / "operator/src/tollgate_operator/__main__.py")
    assert "wait_for_schema" in _calls(REPO / "gateway/src/tollgate_gateway/services.py")
    assert "wait_for_schema" in _calls(REPO / "gateway/schema/src/tollgate_schema/__main__.py")
