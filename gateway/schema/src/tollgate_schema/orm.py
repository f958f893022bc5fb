"""SQLAlchemy models: the one description of the database schema (Alembic owns changes)."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    REAL,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

MONEY = Numeric(18, 8)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # Fetch server-generated values (timestamps) with RETURNING, so async code never
    # triggers a lazy load after commit.
    __mapper_args__ = {"eager_defaults": True}


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16), default="viewer")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class App(Base):
    __tablename__ = "apps"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    owner: Mapped[str | None] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(32))
    owner: Mapped[str | None] = mapped_column(String(200))
    app: Mapped[str | None] = mapped_column(String(200))
    allowed_models: Mapped[str] = mapped_column(Text, default="*", server_default="*")
    rate_limit_rpm: Mapped[int | None] = mapped_column(Integer)
    tpm_limit: Mapped[int | None] = mapped_column(Integer)
    concurrency_limit: Mapped[int | None] = mapped_column(Integer)
    monthly_budget: Mapped[Decimal | None] = mapped_column(MONEY)
    # Its share of a full pool's queue: interactive, standard, batch or a weight (NULL: standard).
    priority: Mapped[str | None] = mapped_column(String(32))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # "operator:<namespace>/<name>" when an ApiKey resource owns this row; the admin API
    # refuses to change such rows so the two never fight.
    managed_by: Mapped[str | None] = mapped_column(String(300), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Model(Base):
    """A model alias as clients name it, and where it runs."""

    __tablename__ = "models"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    alias: Mapped[str] = mapped_column(String(200), unique=True)
    backend_tag: Mapped[str] = mapped_column(String(300))
    backend_url: Mapped[str | None] = mapped_column(String(500))
    # The replicas that hold the model and may take traffic ([{"name", "url"}]); NULL: use
    # backend_url as it is. The pool's spec.routing ({"pool", "policy", "prefix_chars"}).
    replicas: Mapped[list[dict[str, str]] | None] = mapped_column(JSONB)
    routing: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    # Disabled only until it is ready (its ModelAlias's model is still being pulled): keys that
    # may use it are told "not ready yet" (503, Retry-After) rather than "does not exist".
    pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    input_price_per_mtok: Mapped[Decimal] = mapped_column(MONEY, default=0, server_default="0")
    output_price_per_mtok: Mapped[Decimal] = mapped_column(MONEY, default=0, server_default="0")
    managed_by: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class UsageEvent(Base):
    __tablename__ = "usage_events"
    __table_args__ = (
        Index("ix_usage_events_key_id_ts", "key_id", "ts"),
        Index("ix_usage_events_alias_ts", "alias", "ts"),
        Index("ix_usage_events_ts_brin", "ts", postgresql_using="brin"),
        Index(
            "uq_usage_events_stream_id",
            "stream_id",
            unique=True,
            postgresql_where=text("stream_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    request_id: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    app: Mapped[str | None] = mapped_column(String(200))
    alias: Mapped[str | None] = mapped_column(String(200))
    backend_tag: Mapped[str | None] = mapped_column(String(300))
    endpoint: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(SmallInteger)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[Decimal] = mapped_column(MONEY, default=0)
    latency_ms: Mapped[float] = mapped_column(REAL)
    ttft_ms: Mapped[float | None] = mapped_column(REAL)
    streamed: Mapped[bool] = mapped_column(Boolean, default=False)
    error_class: Mapped[str | None] = mapped_column(String(64))
    # The Redis stream entry the row was drained from (None: written from the local buffer).
    stream_id: Mapped[str | None] = mapped_column(String(40))


class StoredResponse(Base):
    """A response of the Responses API kept for ``previous_response_id`` and
    ``GET /v1/responses/{id}``, visible only to the key that made it. ``input`` is the
    whole conversation that led to it (so a chain is one row away); rows older than the
    retention are deleted by `storage.responses.ResponseStore`'s sweep."""

    __tablename__ = "stored_responses"
    __table_args__ = (
        Index("ix_stored_responses_key_id_created_at", "key_id", "created_at"),
        Index("ix_stored_responses_created_at_brin", "created_at", postgresql_using="brin"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    alias: Mapped[str] = mapped_column(String(200))
    previous_response_id: Mapped[str | None] = mapped_column(String(64))
    input: Mapped[list[Any]] = mapped_column(JSONB)
    response: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AuditEvent(Base):
    """One change to a key, alias, user or app, or a login; written in the change's own
    transaction (admin API) or the operator's. Never updated; pruned after the retention."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_ts", "ts"),
        Index("ix_audit_events_target", "target_type", "target_id", "id"),
        Index("ix_audit_events_actor", "actor", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    actor: Mapped[str] = mapped_column(String(320))
    source: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(64))
    target_name: Mapped[str | None] = mapped_column(String(320))
    before: Mapped[dict[str, object] | None] = mapped_column(JSONB)
    after: Mapped[dict[str, object] | None] = mapped_column(JSONB)
    request_id: Mapped[str | None] = mapped_column(String(64))


# Hourly and daily pre-aggregates of usage_events, kept by a trigger (migration 0019). The
# histogram columns count latencies and times to first token per bucket of ROLLUP_BUCKETS_MS.
ROLLUP_BUCKETS_MS = (10, 25, 50, 100, 150, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000,
                     5000, 7500, 10000, 15000, 20000, 30000, 60000, 120000)  # fmt: skip
ROLLUP_LAT = tuple(f"lat_{i:02d}" for i in range(len(ROLLUP_BUCKETS_MS) + 1))
ROLLUP_TTFT = tuple(f"ttft_{i:02d}" for i in range(len(ROLLUP_BUCKETS_MS) + 1))


def _rollup_table(name: str) -> Table:
    return Table(
        name,
        Base.metadata,
        # One value of one dimension: key (its id as text), app, model (the alias) or endpoint.
        Column("dim", String(16), nullable=False),
        Column("bucket", DateTime(timezone=True), nullable=False),
        Column("value", String(200)),
        Column("requests", BigInteger, nullable=False),
        Column("errors", BigInteger, nullable=False),
        Column("prompt_tokens", BigInteger, nullable=False),
        Column("completion_tokens", BigInteger, nullable=False),
        Column("cost", MONEY, nullable=False),
        Column("latency_ms_sum", Float, nullable=False),
        Column("ttft_count", BigInteger, nullable=False),
        *(Column(c, Integer, nullable=False) for c in (*ROLLUP_LAT, *ROLLUP_TTFT)),
        Index(
            f"uq_{name}_group",
            "dim",
            "bucket",
            "value",
            unique=True,
            postgresql_nulls_not_distinct=True,
        ),
        Index(f"ix_{name}_dim_value_bucket", "dim", "value", "bucket"),
    )


usage_hourly = _rollup_table("usage_hourly")
usage_daily = _rollup_table("usage_daily")
