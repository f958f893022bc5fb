"""usage rollups: hourly and daily pre-aggregates of usage_events, kept by a trigger

The console's overview and usage explorer read these instead of scanning usage_events, so a
30-day query touches a few thousand rows whatever the traffic. A statement-level trigger with
a transition table folds each inserted batch (the usage writer's COPY) into both tables with
one upsert each. Latency and time-to-first-token are kept as fixed-bucket histograms, so
percentiles of any group and range come from summed bucket counts.

Revision ID: 0019_usage_rollups
Revises: 0001
Create Date: 2026-12-01 00:19:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019_usage_rollups"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Upper bounds (ms) of the histogram buckets; bucket i counts values in [bound[i-1], bound[i]),
# the last one everything from 120 s up. tollgate_gateway.usage.rollup.BUCKETS_MS must match.
BUCKETS_MS = (10, 25, 50, 100, 150, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 5000,
              7500, 10000, 15000, 20000, 30000, 60000, 120000)  # fmt: skip
N = len(BUCKETS_MS) + 1
LAT = [f"lat_{i:02d}" for i in range(N)]
TTFT = [f"ttft_{i:02d}" for i in range(N)]
SUMS = ["requests", "errors", "prompt_tokens", "completion_tokens", "cost", "latency_ms_sum",
        "ttft_count", *LAT, *TTFT]  # fmt: skip
GROUP = ["bucket", "key_id", "app", "alias", "endpoint"]
THRESHOLDS = "'{" + ",".join(str(b) for b in BUCKETS_MS) + "}'::real[]"


def _aggregates() -> str:
    parts = [
        "count(*)",
        "count(*) FILTER (WHERE status >= 400)",
        "coalesce(sum(prompt_tokens), 0)",
        "coalesce(sum(completion_tokens), 0)",
        "coalesce(sum(cost), 0)",
        "coalesce(sum(latency_ms), 0)",
        "count(ttft_ms)",
    ]
    parts += [
        f"count(*) FILTER (WHERE width_bucket(latency_ms, {THRESHOLDS}) = {i})" for i in range(N)
    ]
    parts += [
        f"count(*) FILTER (WHERE width_bucket(ttft_ms, {THRESHOLDS}) = {i})" for i in range(N)
    ]
    return ",\n           ".join(parts)


def _fold(table: str, unit: str, source: str) -> str:
    """INSERT … SELECT … ON CONFLICT that adds `source` rows of usage_events into `table`."""
    columns = ", ".join([*GROUP, *SUMS])
    updates = ", ".join(f"{c} = t.{c} + EXCLUDED.{c}" for c in SUMS)
    return f"""
    INSERT INTO {table} AS t ({columns})
    SELECT date_trunc('{unit}', ts, 'UTC'), key_id, app, alias, endpoint,
           {_aggregates()}
    FROM {source}
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (bucket, key_id, app, alias, endpoint) DO UPDATE SET {updates}"""  # noqa: S608 (constants only)


def _create(table: str) -> None:
    op.create_table(
        table,
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.UUID(), nullable=True),
        sa.Column("app", sa.String(length=200), nullable=True),
        sa.Column("alias", sa.String(length=200), nullable=True),
        sa.Column("endpoint", sa.String(length=64), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.Numeric(precision=18, scale=8), nullable=False),
        sa.Column("latency_ms_sum", sa.Float(), nullable=False),
        sa.Column("ttft_count", sa.BigInteger(), nullable=False),
        *(sa.Column(c, sa.Integer(), nullable=False) for c in [*LAT, *TTFT]),
    )
    op.create_index(
        f"uq_{table}_group",
        table,
        GROUP,
        unique=True,
        postgresql_nulls_not_distinct=True,
    )
    op.create_index(f"ix_{table}_key_id_bucket", table, ["key_id", "bucket"])


FUNCTION = f"""
CREATE OR REPLACE FUNCTION tollgate_usage_rollup() RETURNS trigger AS $$
BEGIN
    {_fold("usage_hourly", "hour", "new_rows")};
    {_fold("usage_daily", "day", "new_rows")};
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
"""


def upgrade() -> None:
    _create("usage_hourly")
    _create("usage_daily")
    op.execute(FUNCTION)
    op.execute(
        "CREATE TRIGGER usage_events_rollup AFTER INSERT ON usage_events "
        "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
        "EXECUTE FUNCTION tollgate_usage_rollup()"
    )
    # Existing events, once.
    op.execute(_fold("usage_hourly", "hour", "usage_events"))
    op.execute(_fold("usage_daily", "day", "usage_events"))


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS usage_events_rollup ON usage_events")
    op.execute("DROP FUNCTION IF EXISTS tollgate_usage_rollup()")
    op.drop_table("usage_daily")
    op.drop_table("usage_hourly")
