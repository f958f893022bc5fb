"""Usage is never lost: flushed on SIGTERM, spooled when PostgreSQL is down, replayed later."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path

import httpx
import openai
import psycopg
import redis

from tollgate_dev.plugins.services import Admin, Gateways, gateway_env
from tollgate_dev.servers.backing import LocalPostgres, LocalValkey
from tollgate_dev.servers.programs import GatewayProcess, StandinProcess

SLOW_FLUSH = {
    "TOLLGATE_USAGE_VIA_REDIS": "false",  # rows wait in the buffer, as this file tests
    "TOLLGATE_USAGE_FLUSH_INTERVAL_SECONDS": "3600",
    "TOLLGATE_USAGE_BATCH_SIZE": "100000",
}


def count(dsn: str, key_id: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM usage_events WHERE key_id = %s", (key_id,)
        ).fetchone()
    return int(row[0]) if row else 0


def requests(gateway: GatewayProcess, key: str, model: str, n: int) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    for _ in range(n):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])


def test_sigterm_flushes_buffered_usage(
    gateways: Gateways, admin: Admin, chat_model: str, migrated_dsn: str
) -> None:
    gateway = gateways.start(**SLOW_FLUSH)
    key = admin.create_key()
    requests(gateway, key["key"], chat_model, 7)
    assert count(migrated_dsn, key["id"]) == 0  # still buffered: nothing written yet
    assert gateway.stop() in (0, -15)  # uvicorn re-raises SIGTERM after a graceful stop
    assert count(migrated_dsn, key["id"]) == 7


def test_usage_survives_a_database_outage_at_shutdown(
    service_dir: Path, valkey: LocalValkey, standin: StandinProcess
) -> None:
    from tollgate_gateway.cli import migrate
    from tollgate_gateway.config import Settings

    pg = LocalPostgres(service_dir / "outage-postgres")
    pg.start()
    port = pg.port
    migrate(Settings(postgres_dsn=pg.dsn))
    spool = service_dir / "spool"
    env = gateway_env(
        pg.dsn, valkey.url, standin.url, TOLLGATE_USAGE_SPOOL_DIR=str(spool), **SLOW_FLUSH
    )
    first = GatewayProcess(env, log_path=service_dir / "outage-gateway-1.log")
    first.start()
    try:
        admin = Admin(first.url)
        admin.ensure_model("m", "llama3:8b")
        key = admin.create_key()
        requests(first, key["key"], "m", 5)
        pg.stop()  # the database goes away with five events still buffered
        first.stop()
        spooled = list(spool.glob("usage-*.jsonl"))
        assert len(spooled) == 1
        assert len(spooled[0].read_text().splitlines()) == 5
        pg = LocalPostgres(service_dir / "outage-postgres", port=port)
        pg.start()
        second = GatewayProcess(
            {**env, "TOLLGATE_USAGE_FLUSH_INTERVAL_SECONDS": "0.1"},
            log_path=service_dir / "outage-gateway-2.log",
        )
        second.start()  # replays the spool at start
        deadline = time.monotonic() + 15
        while count(pg.dsn, key["id"]) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert count(pg.dsn, key["id"]) == 5
        assert not list(spool.glob("usage-*"))
        second.stop()
    finally:
        first.stop()
        pg.stop()


def test_sigkill_under_load_loses_no_usage(
    gateways: Gateways, admin: Admin, chat_model: str, migrated_dsn: str
) -> None:
    """Rows go to Redis with the settlement: of two gateways under 30 s of load, one killed
    halfway loses no row, and the entries it had read but not written are written by the
    other."""
    fast_reclaim = {"TOLLGATE_USAGE_RECLAIM_SECONDS": "2"}
    victim = gateways.start(**fast_reclaim)
    survivor = gateways.start(**fast_reclaim)
    keys = [admin.create_key(rate_limit_rpm=1_000_000), admin.create_key()]  # both paths
    answered = {k["id"]: 0 for k in keys}
    body = {"model": chat_model, "messages": [{"role": "user", "content": "x"}]}
    ends = time.monotonic() + 30

    async def load(i: int, http: httpx.AsyncClient) -> None:
        key = keys[i % 2]
        gateway = victim if i % 4 < 2 else survivor
        while time.monotonic() < ends:
            try:
                r = await http.post(
                    gateway.url + "/v1/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {key['key']}"},
                )
            except httpx.HTTPError:
                if gateway.proc is None or gateway.proc.poll() is not None:
                    return  # killed
                continue
            assert r.status_code == 200, r.text
            answered[key["id"]] += 1

    async def run() -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            clients = [asyncio.create_task(load(i, http)) for i in range(16)]
            await asyncio.sleep(15)
            await asyncio.get_running_loop().run_in_executor(None, victim.kill)
            await asyncio.gather(*clients)

    asyncio.run(run())
    assert all(n > 100 for n in answered.values()), answered
    deadline = time.monotonic() + 30
    while True:
        rows = {key_id: count(migrated_dsn, key_id) for key_id in answered}
        if rows == answered or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert rows == answered


def test_a_client_made_model_name_never_blocks_usage_writes(
    gateways: Gateways, admin: Admin, chat_model: str, migrated_dsn: str
) -> None:
    """Refused requests get usage rows carrying the model name the client sent: a name that
    PostgreSQL cannot store as text (a NUL byte) must not stop the
    writer, whose next batches would otherwise fail behind it for ever."""
    gateway = gateways.start()
    key = admin.create_key()
    headers = {"Authorization": f"Bearer {key['key']}", "Content-Type": "application/json"}
    for model in ("bad\u0000name", "tab\tand\\back"):
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "x"}]})
        answer = httpx.post(gateway.url + "/v1/chat/completions", content=body, headers=headers)
        assert answer.status_code == 404, answer.text
    requests(gateway, key["key"], chat_model, 1)
    deadline = time.monotonic() + 15
    while count(migrated_dsn, key["id"]) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    with psycopg.connect(migrated_dsn) as conn:
        rows = conn.execute(
            "SELECT status, alias FROM usage_events WHERE key_id = %s ORDER BY ts", (key["id"],)
        ).fetchall()
    assert [status for status, _ in rows] == [404, 404, 200]
    assert rows[0][1] == "badname" and rows[1][1] == "tab\tand\\back"


def test_an_entry_postgres_refuses_never_blocks_the_usage_stream(
    gateways: Gateways, admin: Admin, chat_model: str, migrated_dsn: str, valkey: LocalValkey
) -> None:
    """An entry of the usage stream that Postgres refuses as data (here a corrupt row, as a
    gateway with a bug could write) is dropped and counted; the rows read with it and every
    later row are written. (Before, its batch failed for ever and the consumer, retrying its
    own pending entries first, never read another row.)"""
    stream = "tg:usage:poison-" + secrets.token_hex(3)
    gateway = gateways.start(TOLLGATE_USAGE_STREAM=stream)
    key = admin.create_key()
    requests(gateway, key["key"], chat_model, 1)
    deadline = time.monotonic() + 15
    while count(migrated_dsn, key["id"]) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert count(migrated_dsn, key["id"]) == 1
    client = redis.Redis.from_url(valkey.url)
    try:
        client.xadd(stream, {"r": "not\ta\tusage\trow"})
    finally:
        client.close()
    requests(gateway, key["key"], chat_model, 3)
    deadline = time.monotonic() + 15
    while count(migrated_dsn, key["id"]) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert count(migrated_dsn, key["id"]) == 4
    dropped = httpx.get(gateway.metrics_url, timeout=5).text
    assert "tollgate_usage_events_dropped_total 1.0" in dropped
