"""The console's read API over the usage rollups, and a key holder's GET /v1/key, against a
real gateway, Postgres and Valkey."""

from __future__ import annotations

import csv
import io
import random
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import openai
import psycopg
import pytest
from psycopg import sql

from tollgate_dev.plugins.services import Admin
from tollgate_dev.servers.programs import GatewayProcess
from tollgate_gateway.usage.rollup import ceil_hour, floor_hour, percentile

NewKey = Callable[..., dict[str, Any]]
ENDPOINTS = ["chat.completions", "embeddings", "completions"]  # made unique per test below


def _insert_events(dsn: str, rows: list[tuple[Any, ...]]) -> None:
    """Usage rows written the way the usage writer writes them: one COPY per batch."""
    columns = (
        "ts, request_id, key_id, app, alias, backend_tag, endpoint, status, prompt_tokens, "
        "completion_tokens, cost, latency_ms, ttft_ms, streamed"
    )
    statement = sql.SQL("COPY usage_events ({}) FROM STDIN").format(sql.SQL(columns))
    with psycopg.connect(dsn) as conn, conn.cursor() as cur, cur.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def _synthetic(n: int, since: datetime, span: timedelta, app: str) -> list[tuple[Any, ...]]:
    rng = random.Random(19)
    keys = [uuid.uuid4() for _ in range(3)]
    out = []
    for i in range(n):
        latency = rng.choice([3.0, 40.0, 120.0, 480.0, 2500.0, 9000.0]) * rng.uniform(0.8, 1.2)
        out.append(
            (
                since + span * rng.random(),
                f"req-{app}-{i}",
                rng.choice(keys),
                app,
                rng.choice([f"{app}-model-a", f"{app}-model-b"]),
                "llama3:8b",
                f"{app}:{rng.choice(ENDPOINTS)}",
                rng.choice([200, 200, 200, 429, 502]),
                rng.randint(1, 500),
                rng.randint(0, 500),
                Decimal(rng.randint(0, 10_000)) / Decimal(10**6),
                latency,
                latency / 3 if rng.random() < 0.7 else None,
                False,
            )
        )
    return out


COLUMN = {"key": "key_id::text", "app": "app", "model": "alias", "endpoint": "endpoint"}


def _raw(dsn: str, group: str, app: str, since: datetime, until: datetime) -> dict[Any, Any]:
    """The same aggregates straight from usage_events, hours rounded like the rollups."""
    query = sql.SQL(
        "SELECT {}, count(*), count(*) FILTER (WHERE status >= 400), sum(prompt_tokens), "
        "sum(completion_tokens), sum(cost), array_agg(latency_ms) FROM usage_events "
        "WHERE app = %s AND ts >= %s AND ts < %s GROUP BY 1"
    ).format(sql.SQL(COLUMN[group]))
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(query, (app, floor_hour(since), ceil_hour(until))).fetchall()
    return {r[0]: r[1:] for r in rows}


def _true_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.mark.parametrize("group", ["key", "app", "model", "endpoint"])
def test_explorer_matches_the_raw_events(
    gateway: GatewayProcess, admin: Admin, migrated_dsn: str, group: str
) -> None:
    app = f"explore-{group}-{secrets.token_hex(3)}"
    now = datetime.now(UTC)
    _insert_events(migrated_dsn, _synthetic(600, now - timedelta(days=9), timedelta(days=9), app))
    # A range with partial hours and days at both ends: daily rows inside, hourly at the edges.
    since = now - timedelta(days=6, hours=7, minutes=23)
    until = now - timedelta(hours=5, minutes=11)
    response = admin.http.get(
        "/admin/console/usage",
        params={"group_by": group, "since": since.isoformat(), "until": until.isoformat()},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["bucket"] == "day"
    raw = _raw(migrated_dsn, group, app, since, until)
    got = {r["group"]: r for r in body["rows"] if r["group"] in raw}
    assert set(got) == set(raw) and raw
    for name, (requests, errors, prompt, completion, cost, latencies) in raw.items():
        row = got[name]
        assert (row["requests"], row["errors"]) == (requests, errors)
        assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, completion)
        assert Decimal(row["cost"]) == cost
        # Percentiles are estimated within the histogram bucket of the true value.
        for q, field in ((0.5, "latency_p50_ms"), (0.95, "latency_p95_ms")):
            true = _true_quantile(latencies, q)
            assert row[field] is not None
            assert true / 2.6 <= row[field] <= true * 2.6, (field, true, row[field])
    series = body["series"]
    assert all(p["bucket"].endswith(("+00:00", "Z")) for p in series)
    # One point per UTC day of the range, zeros included, adding up to the table: 7 or 8
    # days, by the time of day the test runs (8 when `since` falls on the day before).
    assert len(series) == (until.date() - since.date()).days + 1
    assert sum(p["requests"] for p in series) >= sum(r[0] for r in raw.values())


def test_rollups_fold_every_batch_and_backfill_is_exact(migrated_dsn: str) -> None:
    app = f"fold-{secrets.token_hex(3)}"
    now = datetime.now(UTC)
    rows = _synthetic(300, now - timedelta(days=2), timedelta(days=2), app)
    for i in range(0, len(rows), 70):  # several batches land on the same hours
        _insert_events(migrated_dsn, rows[i : i + 70])
    with psycopg.connect(migrated_dsn) as conn:
        raw = conn.execute(
            "SELECT count(*), sum(cost), sum(prompt_tokens) FROM usage_events WHERE app = %s",
            (app,),
        ).fetchone()
        keys = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT key_id::text FROM usage_events WHERE app = %s", (app,)
            ).fetchall()
        ]
        histogram = " + ".join(f"lat_{i:02d}" for i in range(23))
        for table in ("usage_hourly", "usage_daily"):
            # Every dimension adds up to the same totals: the app, and the app's keys.
            for dim, values in (("app", [app]), ("key", keys)):
                query = sql.SQL(
                    "SELECT sum(requests), sum(cost), sum(prompt_tokens), sum({}) FROM {} "
                    "WHERE dim = %s AND value = ANY(%s)"
                ).format(sql.SQL(histogram), sql.Identifier(table))
                rolled = conn.execute(query, (dim, values)).fetchone()
                assert rolled is not None and raw is not None
                assert rolled[:3] == raw and rolled[3] == raw[0], (table, dim)


def test_percentile_of_a_histogram() -> None:
    assert percentile([0] * 23, 0.5) is None
    counts = [0] * 23
    counts[3] = 10  # ten values in [50, 100)
    assert percentile(counts, 0.5) == 75.0
    counts[22] = 10  # and ten beyond the last bound
    assert percentile(counts, 0.99) == 120000.0


def _wait(check: Callable[[], bool], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_overview_activity_and_csv_after_real_traffic(
    gateway: GatewayProcess, admin: Admin, new_key: NewKey, chat_model: str
) -> None:
    app = f"console-{secrets.token_hex(3)}"
    key = new_key(app=app, monthly_budget="5")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    for _ in range(3):
        client.chat.completions.create(
            model=chat_model, messages=[{"role": "user", "content": "hello"}]
        )
    list(
        client.chat.completions.create(
            model=chat_model, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )

    def overview() -> dict[str, Any]:
        response = admin.http.get("/admin/console/overview")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    _wait(
        lambda: (
            sum(
                r["requests"]
                for r in admin.http.get("/admin/console/usage", params={"group_by": "app"}).json()[
                    "rows"
                ]
                if r["group"] == app
            )
            == 4
        )
    )
    day = overview()["windows"][0]
    assert day["window"] == "24h" and day["totals"]["requests"] >= 4
    assert 0 <= day["totals"]["error_rate"] <= 1
    counts = [m["requests"] for m in day["top_models"]]
    assert counts and counts == sorted(counts, reverse=True) and len(counts) <= 5
    by_model = admin.http.get("/admin/console/usage", params={"group_by": "model"}).json()
    assert any(r["group"] == chat_model and r["requests"] >= 4 for r in by_model["rows"])

    explorer = admin.http.get("/admin/console/usage", params={"group_by": "key"}).json()
    mine = next(r for r in explorer["rows"] if r["group"] == key["id"])
    assert mine["label"].startswith(key["name"]) and mine["requests"] == 4
    assert mine["ttft_p50_ms"] is not None and mine["latency_p95_ms"] is not None
    assert explorer["bucket"] == "hour" and sum(p["requests"] for p in explorer["series"]) >= 4

    activity = {a["id"]: a for a in admin.http.get("/admin/console/keys/activity").json()}
    assert Decimal(activity[key["id"]]["month_spend"]) > 0
    assert activity[key["id"]]["last_used"] is not None

    csv_response = admin.http.get("/admin/console/usage.csv", params={"group_by": "key"})
    assert csv_response.status_code == 200
    assert csv_response.headers["content-type"].startswith("text/csv")
    assert "attachment" in csv_response.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(csv_response.text)))
    row = next(r for r in table if r["key"] == key["id"])
    assert int(row["requests"]) == 4 and Decimal(row["cost"]) == Decimal(mine["cost"])


def test_csv_neutralises_formulas(admin: Admin, migrated_dsn: str) -> None:
    app = "=HYPERLINK(1)" + secrets.token_hex(2)
    _insert_events(
        migrated_dsn,
        _synthetic(3, datetime.now(UTC) - timedelta(minutes=30), timedelta(minutes=1), app),
    )
    text = admin.http.get("/admin/console/usage.csv", params={"group_by": "app"}).text
    assert f"'{app}" in text and f"\n{app}," not in text


def test_console_api_needs_a_login_and_viewers_may_read(
    gateway: GatewayProcess, admin: Admin
) -> None:
    for path in ("/admin/console/overview", "/admin/console/usage", "/admin/console/keys/activity"):
        assert httpx.get(gateway.url + path).status_code == 401
    email = f"viewer-console-{secrets.token_hex(3)}@tollgate.test"
    assert (
        admin.http.post(
            "/admin/users", json={"email": email, "password": "viewer-password-123"}
        ).status_code
        == 201
    )
    token = httpx.post(
        gateway.url + "/admin/login", json={"email": email, "password": "viewer-password-123"}
    ).json()["access_token"]
    viewer = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {token}"})
    assert viewer.get("/admin/console/overview").status_code == 200
    assert viewer.get("/admin/console/usage", params={"group_by": "endpoint"}).status_code == 200


@pytest.mark.parametrize(
    "params",
    [
        {"since": "2026-11-01T00:00:00"},
        {"since": "2026-11-02T00:00:00Z", "until": "2026-11-01T00:00:00Z"},
        {"since": "2020-01-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
        {"group_by": "password"},
    ],
)
def test_explorer_refuses_bad_ranges(admin: Admin, params: dict[str, str]) -> None:
    response = admin.http.get("/admin/console/usage", params=params)
    assert response.status_code == 400, response.text


def test_self_key_shows_only_that_key(
    gateway: GatewayProcess, admin: Admin, new_key: NewKey, chat_model: str
) -> None:
    admin.ensure_model("console-hidden", "llama3:8b")
    mine = new_key(allowed_models="gpt-*", monthly_budget="2.5", rate_limit_rpm=60, owner="ana")
    other = new_key(app="someone-else")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=mine["key"], max_retries=0)
    client.chat.completions.create(model=chat_model, messages=[{"role": "user", "content": "x"}])
    http = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {mine['key']}"})
    _wait(lambda: http.get("/v1/key").json()["usage_30d"]["requests"] == 1)
    body = http.get("/v1/key").json()
    assert body["id"] == mine["id"] and body["owner"] == "ana"
    assert body["models"] == [chat_model] and "console-hidden" not in body["models"]
    [price] = body["prices"]
    assert price["alias"] == chat_model
    assert Decimal(price["input_price_per_mtok"]) == Decimal("1.5")
    assert Decimal(price["output_price_per_mtok"]) == Decimal(2)
    assert body["rate_limit_rpm"] == 60 and Decimal(body["monthly_budget"]) == Decimal("2.5")
    assert Decimal(body["spent"]) > 0
    assert Decimal(body["remaining"]) == Decimal("2.5") - Decimal(body["spent"])
    assert other["id"] not in str(body) and "key_hash" not in body and "key" not in body
    assert httpx.get(gateway.url + "/v1/key").status_code == 401
    admin.http.delete(f"/admin/keys/{mine['id']}")
    _wait(lambda: http.get("/v1/key").status_code == 401)


def test_migration_backfills_existing_events_and_downgrades(postgres: Any) -> None:
    """Upgrading a database that already holds usage events fills the rollups exactly;
    the downgrade removes them and the trigger."""
    from alembic import command

    from tollgate_schema.db import alembic_config
    from tollgate_schema.dsn import to_sqlalchemy_dsn

    name = f"rollup_{secrets.token_hex(3)}"
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = postgres.dsn.rsplit("/", 1)[0] + "/" + name
    config = alembic_config(to_sqlalchemy_dsn(dsn))
    command.upgrade(config, "0001")
    app = "backfill"
    _insert_events(
        dsn, _synthetic(400, datetime.now(UTC) - timedelta(days=3), timedelta(days=3), app)
    )
    command.upgrade(config, "head")
    with psycopg.connect(dsn) as conn:
        raw = conn.execute(
            "SELECT count(*), sum(cost), count(ttft_ms) FROM usage_events"
        ).fetchone()
        for table in ("usage_hourly", "usage_daily"):
            for dim in ("key", "app", "model", "endpoint"):
                query = sql.SQL(
                    "SELECT sum(requests), sum(cost), sum(ttft_count) FROM {} WHERE dim = %s"
                ).format(sql.Identifier(table))
                assert conn.execute(query, (dim,)).fetchone() == raw, (table, dim)
    command.downgrade(config, "0001")
    with psycopg.connect(dsn) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('usage_hourly', 'usage_daily')"
        ).fetchone()
        triggers = conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'usage_events_rollup'"
        ).fetchone()
    assert left == (0,) and triggers == (0,)


def test_concurrent_flushes_fold_without_deadlock_or_loss(migrated_dsn: str) -> None:
    """Several gateways flush batches on the same keys and hours at once (as replicas do):
    every batch lands in the rollups, none deadlocks."""
    from concurrent.futures import ThreadPoolExecutor

    app = f"concurrent-{secrets.token_hex(3)}"
    now = datetime.now(UTC)
    batches = [
        _synthetic(150, now - timedelta(hours=3), timedelta(hours=3), app) for _ in range(16)
    ]
    for i, batch in enumerate(batches):  # request ids unique across batches
        batches[i] = [(r[0], f"{r[1]}-{i}", *r[2:]) for r in batch]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda b: _insert_events(migrated_dsn, b), batches))
    with psycopg.connect(migrated_dsn) as conn:
        raw = conn.execute(
            "SELECT count(*), sum(cost) FROM usage_events WHERE app = %s", (app,)
        ).fetchone()
        for table in ("usage_hourly", "usage_daily"):
            query = sql.SQL(
                "SELECT sum(requests), sum(cost) FROM {} WHERE dim = 'app' AND value = %s"
            ).format(sql.Identifier(table))
            assert conn.execute(query, (app,)).fetchone() == raw
    assert raw is not None and raw[0] == 16 * 150
