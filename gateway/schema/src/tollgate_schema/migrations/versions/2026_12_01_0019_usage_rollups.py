"""usage rollups: hourly and daily pre-aggregates of usage_events, kept by a trigger

The console's overview and usage explorer read these instead of scanning usage_events. Each
row holds one value of one dimension (dim: key, app, model or endpoint) in one hour or UTC
day, so a 30-day group-by-key query reads about 30 rows per key whatever the traffic. A
statement-level trigger with a transition table folds each inserted batch (the usage
writer's COPY) into both tables with one upsert each. Latency and time-to-first-token are
kept as fixed-bucket histograms, so percentiles of any group and range come from summed
bucket counts.

Revision ID: 0019_usage_rollups
Revises: 0015_stored_responses
Create Date: 2026-12-01 00:19:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019_usage_rollups"
down_revision: str | None = "0015_stored_responses"
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
GROUP = ["dim", "bucket", "value"]
THRESHOLDS = "'{" + ",".join(str(b) for b in BUCKETS_MS) + "}'::real[]"


def _aggregates() -> list[str]:
    """The aggregates of SUMS, in order, over events with their buckets as lb and tb."""
    return [
        "count(*)",
        "count(*) FILTER (WHERE status >= 400)",
        "coalesce(sum(prompt_tokens), 0)",
        "coalesce(sum(completion_tokens), 0)",
        "coalesce(sum(cost), 0)",
        "coalesce(sum(latency_ms), 0)",
        "count(ttft_ms)",
        *(f"count(*) FILTER (WHERE lb = {i})" for i in range(N)),
        *(f"count(*) FILTER (WHERE tb = {i})" for i in range(N)),
    ]


def _fold(source: str) -> str:
    """One statement that adds `source` rows of usage_events into both rollups.

    Events are first grouped by hour and (key, app, model, endpoint), computing each row's
    histogram buckets once; those groups are then fanned out to the four dimensions (a
    lateral VALUES) and summed per hour and per day. Upserts go in key order, so concurrent
    flushes lock rows in the same order."""
    per_hour = [f"{a} AS {c}" for a, c in zip(_aggregates(), SUMS, strict=True)]
    columns = ", ".join([*GROUP, *SUMS])
    sums = ", ".join(f"sum({c})" for c in SUMS)
    updates = ", ".join(f"{c} = t.{c} + EXCLUDED.{c}" for c in SUMS)

    def upsert(table: str, bucket: str) -> str:
        return f"""INSERT INTO {table} AS t ({columns})
        SELECT dim, {bucket}, value, {sums} FROM fanned GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (dim, bucket, value) DO UPDATE SET {updates}"""  # noqa: S608

    return f"""
    WITH grouped AS MATERIALIZED (
        SELECT date_trunc('hour', ts, 'UTC') AS hour, key_id, app, alias, endpoint,
               {", ".join(per_hour)}
        FROM (SELECT *, width_bucket(latency_ms, {THRESHOLDS}) AS lb,
                        width_bucket(ttft_ms, {THRESHOLDS}) AS tb FROM {source}) e
        GROUP BY 1, 2, 3, 4, 5
    ), fanned AS MATERIALIZED (
        SELECT d.dim, d.value, g.* FROM grouped g
        CROSS JOIN LATERAL (VALUES ('key', g.key_id::text), ('app', g.app),
                                   ('model', g.alias), ('endpoint', g.endpoint)) AS d(dim, value)
    ), hourly AS (
        {upsert("usage_hourly", "hour")}
    )
    {upsert("usage_daily", "date_trunc('day', hour, 'UTC')")}"""  # noqa: S608 (constants only)


def _create(table: str) -> None:
    op.create_table(
        table,
        sa.Column("dim", sa.String(length=16), nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=True),
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
    op.create_index(f"ix_{table}_dim_value_bucket", table, ["dim", "value", "bucket"])


FUNCTION = f"""
CREATE OR REPLACE FUNCTION tollgate_usage_rollup() RETURNS trigger AS $$
BEGIN
    {_fold("new_rows")};
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
"""


def _backfill() -> list[str]:
    """Existing events, one dimension at a time (far cheaper on a big table than the
    trigger's fan-out), then the days from the hours."""
    columns = ", ".join([*GROUP, *SUMS])
    aggregates = ", ".join(_aggregates())
    out = ["SET LOCAL work_mem = '256MB'"]
    for dim, column in (("key", "key_id::text"), ("app", "app"), ("model", "alias"),
                        ("endpoint", "endpoint")):  # fmt: skip
        out.append(
            f"INSERT INTO usage_hourly ({columns}) "  # noqa: S608 (constants only)
            f"SELECT '{dim}', date_trunc('hour', ts, 'UTC'), {column}, {aggregates} "
            f"FROM (SELECT *, width_bucket(latency_ms, {THRESHOLDS}) AS lb, "
            f"width_bucket(ttft_ms, {THRESHOLDS}) AS tb FROM usage_events) e GROUP BY 2, 3"
        )
    sums = ", ".join(f"sum({c})" for c in SUMS)
    out.append(
        f"INSERT INTO usage_daily ({columns}) "  # noqa: S608 (constants only)
        f"SELECT dim, date_trunc('day', bucket, 'UTC'), value, {sums} FROM usage_hourly "
        "GROUP BY 1, 2, 3"
    )
    return out


BACKFILL = _backfill()


def upgrade() -> None:
    _create("usage_hourly")
    _create("usage_daily")
    op.execute(FUNCTION)
    op.execute(
        "CREATE TRIGGER usage_events_rollup AFTER INSERT ON usage_events "
        "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
        "EXECUTE FUNCTION tollgate_usage_rollup()"
    )
    # Existing events, once. The trigger's lock on usage_events holds writers back until this
    # migration commits, so no event is counted twice or missed.
    for statement in BACKFILL:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS usage_events_rollup ON usage_events")
    op.execute("DROP FUNCTION IF EXISTS tollgate_usage_rollup()")
    op.drop_table("usage_daily")
    op.drop_table("usage_hourly")
