"""The console's usage explorer at scale: 10 million usage events over 30 days in a real
PostgreSQL, then the explorer's 30-day group-by-key query timed at the database.

    .venv/bin/python bench/usage_query.py                 # 10M rows (≈ 5-10 min on 2 cores)
    .venv/bin/python bench/usage_query.py --rows 1000000  # a quicker look

The synthetic traffic: --keys keys (1000) spread evenly, each in one of --apps apps, sending
80 % of its requests to its own model and 20 % to a second one (of --models), 80 % chat
completions, 15 % embeddings, 5 % completions, 3 % errors, uniform over the 30 days.

Rows go in through INSERT … SELECT in chunks with the rollup trigger off, then the rollups are
filled by migration 0019's own backfill statement (the one the trigger runs per batch), which
is much quicker than folding synthetic data chunk by chunk. Then it times, at the database
(EXPLAIN ANALYZE execution time) and through the gateway's own query code (wall time):
the explorer by key over 30 days, the same by model and endpoint, the overview's 24 h window,
and, for comparison, the raw-table scan that the rollups replace. It also times a
usage-writer-sized batch (500 rows, COPY) with the trigger, the cost the rollups add to
every flush. Results: bench/results/usage-query.json. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
from sqlalchemy.dialects import postgresql

from tollgate_dev.servers.backing import LocalPostgres
from tollgate_gateway.cli import migrate
from tollgate_gateway.config import Settings
from tollgate_gateway.usage.rollup import RollupService, source
from tollgate_schema.db import create_engine
from tollgate_schema.dsn import to_sqlalchemy_dsn

ROOT = Path(__file__).resolve().parent
MIGRATIONS = ROOT.parent / "gateway" / "alembic" / "versions"

GENERATE = """
INSERT INTO usage_events (ts, request_id, key_id, app, alias, backend_tag, endpoint, status,
                          prompt_tokens, completion_tokens, cost, latency_ms, ttft_ms, streamed)
SELECT %(start)s::timestamptz + (random() * %(span)s) * interval '1 second',
       'bench-' || g,
       ('00000000-0000-4000-8000-' || lpad(to_hex(k), 12, '0'))::uuid,
       'app-' || (k %% %(apps)s),
       'model-' || ((k + (g %% 5 = 0)::int) %% %(models)s),
       'llama3:8b',
       CASE WHEN g %% 20 < 16 THEN 'chat.completions' WHEN g %% 20 < 19 THEN 'embeddings'
            ELSE 'completions' END,
       CASE WHEN random() < 0.02 THEN 429 WHEN random() < 0.01 THEN 502 ELSE 200 END,
       (random() * 800)::int, (random() * 400)::int,
       round((random() * 0.002)::numeric, 8),
       (20 + random() * random() * 8000)::real,
       CASE WHEN g %% 2 = 0 THEN (5 + random() * 600)::real END,
       g %% 2 = 0
FROM (SELECT g, (1 + (g * 7919) %% %(keys)s)::int AS k
      FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g) s
"""

RAW_SCAN = """
SELECT key_id, count(*), count(*) FILTER (WHERE status >= 400), sum(prompt_tokens),
       sum(completion_tokens), sum(cost),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms)
FROM usage_events WHERE ts >= %(since)s AND ts < %(until)s GROUP BY key_id
"""


def _migration() -> ModuleType:
    path = next(MIGRATIONS.glob("*_0019_usage_rollups.py"))
    spec = importlib.util.spec_from_file_location("usage_rollups_migration", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sql(query: Any) -> str:
    return str(query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))


def explain_ms(
    conn: psycopg.Connection[Any], sql: str, params: dict[str, Any] | None = None
) -> float:
    plan = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params).fetchone()  # type: ignore[arg-type]
    assert plan is not None
    return float(plan[0][0]["Execution Time"])


def copy_batch(conn: psycopg.Connection[Any], now: datetime, tag: str) -> float:
    """Milliseconds to COPY 500 usage rows (one usage-writer flush) over 20 keys and 4 models."""
    rows = [
        (now, f"{tag}-{i}", f"00000000-0000-4000-8000-{i % 20:012x}", "app-1",
         f"model-{i % 4}", "llama3:8b", "chat.completions", 200, 10, 10, 0, 100.0, None, False)
        for i in range(500)
    ]  # fmt: skip
    started = time.perf_counter()
    with (
        conn.cursor() as cur,
        cur.copy(
            "COPY usage_events (ts, request_id, key_id, app, alias, backend_tag, endpoint, status, "
            "prompt_tokens, completion_tokens, cost, latency_ms, ttft_ms, streamed) FROM STDIN"
        ) as copy,
    ):
        for row in rows:
            copy.write_row(row)
    return (time.perf_counter() - started) * 1000


def explorer_sql(group: str, since: datetime, until: datetime) -> str:
    """The SQL RollupService.explore sends (same builder), with literals bound."""
    from sqlalchemy import func, select

    from tollgate_gateway.usage.rollup import SUMMED
    from tollgate_schema.orm import ROLLUP_LAT, ROLLUP_TTFT

    src = source(group, since, until)
    col = src.c.value
    cols = [func.sum(src.c[c]) for c in (*SUMMED, *ROLLUP_LAT, *ROLLUP_TTFT)]
    query = select(col, *cols).group_by(col).order_by(func.sum(src.c.requests).desc(), col)
    return _sql(query)


async def wall_ms(dsn: str, group: str, since: datetime, until: datetime, runs: int) -> list[float]:
    engine = create_engine(to_sqlalchemy_dsn(dsn), pool_size=1)
    service = RollupService(engine)
    times = []
    try:
        for _ in range(runs):
            started = time.perf_counter()
            await service.explore(group, since, until)  # type: ignore[arg-type]
            times.append((time.perf_counter() - started) * 1000)
    finally:
        await engine.dispose()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--apps", type=int, default=40)
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--raw", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "usage-query.json")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="tollgate-bench-usage-", dir="/var/tmp"))
    base.chmod(0o755)
    pg = LocalPostgres(base / "postgres")
    dsn = pg.start()
    results: dict[str, Any] = {"rows": args.rows, "keys": args.keys, "models": args.models}
    try:
        migrate(Settings(postgres_dsn=dsn))
        now = datetime.now(UTC)
        start = now - timedelta(days=30)
        with psycopg.connect(dsn, autocommit=True) as conn:
            started = time.perf_counter()
            conn.execute("ALTER TABLE usage_events DISABLE TRIGGER usage_events_rollup")
            for lo in range(1, args.rows + 1, args.chunk):
                hi = min(args.rows, lo + args.chunk - 1)
                t0 = time.perf_counter()
                conn.execute(
                    GENERATE,  # type: ignore[arg-type]
                    {"start": start, "span": 30 * 86400, "apps": args.apps, "models": args.models,
                     "keys": args.keys, "lo": lo, "hi": hi},
                )  # fmt: skip
                print(f"  rows {hi:>11,}  ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
            results["load_seconds"] = round(time.perf_counter() - started, 1)
            t0 = time.perf_counter()
            with conn.transaction():
                for statement in _migration().BACKFILL:
                    conn.execute(statement)
            conn.execute("ALTER TABLE usage_events ENABLE TRIGGER usage_events_rollup")
            results["rollup_backfill_seconds"] = round(time.perf_counter() - t0, 1)
            print(f"  rollups filled ({results['rollup_backfill_seconds']} s)", file=sys.stderr)
            conn.execute("VACUUM ANALYZE usage_events")
            conn.execute("VACUUM ANALYZE usage_hourly")
            conn.execute("VACUUM ANALYZE usage_daily")
            sizes = conn.execute(
                "SELECT (SELECT count(*) FROM usage_hourly), (SELECT count(*) FROM usage_daily), "
                "pg_size_pretty(pg_total_relation_size('usage_events')), "
                "pg_size_pretty(pg_total_relation_size('usage_hourly') "
                "+ pg_total_relation_size('usage_daily'))"
            ).fetchone()
            assert sizes is not None
            results |= {"hourly_rows": sizes[0], "daily_rows": sizes[1],
                        "events_size": sizes[2], "rollups_size": sizes[3]}  # fmt: skip

            # A usage-writer batch: 500 rows by COPY, with the rollup trigger and without.
            for label, trigger in (("copy_500_rows_ms_median", True),
                                   ("copy_500_rows_without_trigger_ms_median", False)):  # fmt: skip
                if not trigger:
                    conn.execute("ALTER TABLE usage_events DISABLE TRIGGER usage_events_rollup")
                batch = [copy_batch(conn, now, f"{label}-{i}") for i in range(args.runs)]
                if not trigger:
                    conn.execute("ALTER TABLE usage_events ENABLE TRIGGER usage_events_rollup")
                results[label] = round(statistics.median(batch), 1)

            queries: dict[str, Any] = {}
            windows = {
                "30d": (now - timedelta(days=30), now),
                "24h": (now - timedelta(days=1), now),
            }
            for label, group in (("30d", "key"), ("30d", "model"), ("30d", "endpoint"),
                                 ("24h", "key")):  # fmt: skip
                since, until = windows[label]
                sql = explorer_sql(group, since, until)
                db = [explain_ms(conn, sql) for _ in range(args.runs)]
                wall = asyncio.run(wall_ms(dsn, group, since, until, args.runs))
                queries[f"explorer {label} by {group}"] = {
                    "db_ms_median": round(statistics.median(db), 1),
                    "db_ms_max": round(max(db), 1),
                    "wall_ms_median": round(statistics.median(wall), 1),
                }
                print(f"  explorer {label} by {group}: db {statistics.median(db):.1f} ms, "
                      f"wall {statistics.median(wall):.1f} ms", file=sys.stderr)  # fmt: skip
            if args.raw:
                since, until = windows["30d"]
                raw = explain_ms(conn, RAW_SCAN, {"since": since, "until": until})
                queries["raw scan 30d by key (what the rollups replace)"] = {
                    "db_ms_median": round(raw, 1)
                }
                print(f"  raw usage_events scan 30d by key: {raw:.0f} ms", file=sys.stderr)
            results["queries"] = queries
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
