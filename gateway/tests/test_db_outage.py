"""Postgres stopped for 30 s under load: known keys keep working from memory, unknown ones get
503 with Retry-After (never 500), revocations from before the outage hold, every usage row
is written once Postgres is back, and the log says so in a bounded number of lines."""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tollgate_dev.plugins.services import Admin, gateway_env
from tollgate_dev.servers.backing import LocalPostgres, LocalValkey
from tollgate_dev.servers.programs import GatewayProcess, StandinProcess

OUTAGE_SECONDS = 30
MODEL = "outage-chat"


@pytest.fixture(scope="module")
def own_postgres(service_dir: Path) -> Iterator[LocalPostgres]:
    """A PostgreSQL of this module's own: stopping it must not disturb other tests."""
    pg = LocalPostgres(service_dir / "outage-postgres", log_file=service_dir / "outage-pg.log")
    pg.start()
    from tollgate_gateway.cli import migrate
    from tollgate_gateway.config import Settings

    migrate(Settings(postgres_dsn=pg.dsn))
    yield pg
    pg.stop()


@pytest.fixture(scope="module")
def outage_gateway(
    own_postgres: LocalPostgres, valkey: LocalValkey, standin: StandinProcess, service_dir: Path
) -> Iterator[GatewayProcess]:
    env = gateway_env(own_postgres.dsn, valkey.url, standin.url)
    gateway = GatewayProcess(env, log_path=service_dir / "outage-gateway.log")
    gateway.start()
    yield gateway
    gateway.stop()


def chat(client: httpx.Client, key: str) -> httpx.Response:
    return client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
    )


def usage_count(dsn: str, key_ids: list[str]) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM usage_events WHERE key_id = ANY(%s::uuid[])", (key_ids,)
        ).fetchone()
        return int(row[0]) if row else 0


def test_postgres_outage_under_load(
    outage_gateway: GatewayProcess, own_postgres: LocalPostgres
) -> None:
    gateway = outage_gateway
    admin = Admin(gateway.url)
    admin.ensure_model(MODEL, "llama3:8b")
    known = [admin.create_key(), admin.create_key(rate_limit_rpm=100_000)]
    revoked = admin.create_key()
    never_used = admin.create_key()  # valid, but this gateway has not seen it before
    client = httpx.Client(base_url=gateway.url, timeout=30)
    for key in (*known, revoked):
        assert chat(client, key["key"]).status_code == 200
    assert admin.http.delete(f"/admin/keys/{revoked['id']}").is_success
    time.sleep(0.5)  # the change feed drops the revoked key from the cache
    assert chat(client, revoked["key"]).status_code == 401
    admin.http.close()

    ok_responses: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    stop = threading.Event()

    def load(key: dict[str, Any]) -> None:
        with httpx.Client(base_url=gateway.url, timeout=30) as mine:
            while not stop.is_set():
                response = chat(mine, key["key"])
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    ok_responses[key["id"]] += 1
                time.sleep(0.05)

    threads = [threading.Thread(target=load, args=(k,)) for k in known for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(1)
    assert gateway.log_path is not None
    log_lines_before = len(gateway.log_path.read_text().splitlines())

    own_postgres.stop()
    during: Counter[tuple[str, int]] = Counter()
    retry_after: set[str] = set()
    readiness: set[tuple[int, str]] = set()
    deadline = time.monotonic() + OUTAGE_SECONDS
    try:
        while time.monotonic() < deadline:
            for name, key in (
                ("unknown", "tg-" + secrets.token_urlsafe(30)),
                ("never_used", never_used["key"]),
                ("revoked", revoked["key"]),
            ):
                response = chat(client, key)
                during[(name, response.status_code)] += 1
                if response.status_code == 503:
                    retry_after.add(response.headers.get("retry-after", ""))
                    assert response.json()["error"]["code"] == "service_unavailable"
            ready = client.get("/readyz")
            readiness.add((ready.status_code, ready.json()["status"]))
            time.sleep(0.5)
    finally:
        own_postgres.start()
    time.sleep(3)
    stop.set()
    for thread in threads:
        thread.join()

    assert statuses[500] == 0, statuses
    assert set(statuses) == {200}, statuses  # known keys never noticed
    assert sum(ok_responses.values()) > 100
    # unknown keys: 503; the revocation seen before the outage still holds (401, from memory)
    assert {status for (name, status) in during if name != "revoked"} == {503}, during
    assert {status for (name, status) in during if name == "revoked"} == {401}, during
    assert retry_after and all(v.isdigit() for v in retry_after)
    assert readiness == {(200, "degraded")}, readiness
    log_lines = [  # the access log's one line per request is not what this bounds
        line
        for line in gateway.log_path.read_text().splitlines()[log_lines_before:]
        if "tollgate_gateway.access" not in line
    ]
    assert len(log_lines) < 20, log_lines[:40]  # was one traceback per request (~60 MB/30 s)

    # Postgres is back: everything is as it was, and no usage row is missing.
    assert chat(client, known[0]["key"]).status_code == 200
    assert chat(client, never_used["key"]).status_code == 200
    assert chat(client, revoked["key"]).status_code == 401
    # every answer under load, the one just above, and the warm-up request of each known key
    expected = sum(ok_responses.values()) + 1 + len(known)
    ids = [k["id"] for k in known]
    deadline = time.monotonic() + 30
    while usage_count(own_postgres.dsn, ids) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
    assert usage_count(own_postgres.dsn, ids) == expected
    assert client.get("/readyz").json()["status"] == "ok"
    client.close()
