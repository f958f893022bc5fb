"""Stored responses against a real Postgres: per-key visibility, retention and its sweep,
and the table as migration 0015 made it (matching the ORM, indexed)."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tollgate_gateway.storage.responses import ResponseStore
from tollgate_schema.db import create_engine
from tollgate_schema.dsn import to_sqlalchemy_dsn
from tollgate_schema.orm import Base

DAY = 86400


async def test_visible_to_its_key_until_retention_then_swept(migrated_dsn: str) -> None:
    engine = create_engine(to_sqlalchemy_dsn(migrated_dsn))
    store = ResponseStore(engine, retention_seconds=DAY, sweep_interval_seconds=3600, sweep_batch=2)
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    ids = [f"resp_{uuid.uuid4().hex}" for _ in range(5)]
    try:
        for i, rid in enumerate(ids):
            conversation = [{"type": "message", "role": "user", "content": f"turn {i}"}]
            await store.save(rid, mine, "gpt-4", None, conversation, {"id": rid, "output": []})
        got = await store.get(ids[0], mine)
        assert got is not None and got.input[0]["content"] == "turn 0" and got.alias == "gpt-4"
        assert await store.get(ids[0], theirs) is None
        assert not await store.delete(ids[0], theirs)
        assert await store.delete(ids[0], mine) and await store.get(ids[0], mine) is None
        with psycopg.connect(migrated_dsn) as conn:  # three of them grow old
            conn.execute(
                "UPDATE stored_responses SET created_at = now() - interval '2 days' "
                "WHERE id = ANY(%s)",
                (ids[1:4],),
            )
        assert await store.get(ids[1], mine) is None  # past retention: gone at once
        assert await store.get(ids[4], mine) is not None
        assert await store.sweep() >= 3  # in batches of two
        with psycopg.connect(migrated_dsn) as conn:
            left = conn.execute(
                "SELECT id FROM stored_responses WHERE id = ANY(%s)", (ids,)
            ).fetchall()
        assert left == [(ids[4],)]
    finally:
        await engine.dispose()


async def test_sweep_runs_in_the_background(migrated_dsn: str) -> None:
    engine = create_engine(to_sqlalchemy_dsn(migrated_dsn))
    store = ResponseStore(engine, retention_seconds=DAY, sweep_interval_seconds=0.05)
    rid = f"resp_{uuid.uuid4().hex}"
    await store.save(rid, uuid.uuid4(), "a", None, [], {"id": rid})
    with psycopg.connect(migrated_dsn) as conn:
        conn.execute(
            "UPDATE stored_responses SET created_at = now() - interval '3 days' WHERE id = %s",
            (rid,),
        )
    store.start()
    try:
        for _ in range(100):
            with psycopg.connect(migrated_dsn) as conn:
                row = conn.execute(
                    "SELECT 1 FROM stored_responses WHERE id = %s", (rid,)
                ).fetchone()
            if row is None:
                break
            await asyncio.sleep(0.05)
        assert row is None
    finally:
        await store.stop()
        await engine.dispose()


def test_table_matches_the_orm_and_is_indexed(migrated_dsn: str) -> None:
    engine = sa.create_engine(to_sqlalchemy_dsn(migrated_dsn))
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            indexes = {
                row[0]: row[1]
                for row in conn.execute(
                    sa.text(
                        "SELECT indexname, indexdef FROM pg_indexes "
                        "WHERE tablename = 'stored_responses'"
                    )
                )
            }
    finally:
        engine.dispose()
    ours = [d for d in diff if "stored_responses" in repr(d)]
    assert ours == []
    assert "(key_id, created_at)" in indexes["ix_stored_responses_key_id_created_at"]
    assert "USING brin (created_at)" in indexes["ix_stored_responses_created_at_brin"]
