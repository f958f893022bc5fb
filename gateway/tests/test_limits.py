"""Limits a tenant cannot sidestep: repeated request ids, long streams, disconnects, tokens."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from tollgate_dev.plugins.services import Admin, Gateways
from tollgate_dev.servers.backing import LocalValkey
from tollgate_dev.servers.programs import GatewayProcess, StandinProcess

SAME_ID = {"x-request-id": "same-id-every-time"}


@pytest.fixture(scope="module")
def slow_standin(service_dir: Path) -> Iterator[StandinProcess]:
    """A stand-in that streams 20 tokens per second, so requests overlap."""
    proc = StandinProcess(
        log_path=service_dir / "limits-slow-standin.log",
        extra=["--tokens-per-second", "20", "--parallel", "64", "--completion-tokens", "400"],
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def slow_model(admin: Admin, slow_standin: StandinProcess, gateway: GatewayProcess) -> str:
    admin.ensure_model(
        "slow-limits",
        "llama3:8b",
        backend_url=slow_standin.url,
        input_price_per_mtok="1000",
        output_price_per_mtok="1000",
    )
    wait_alias(gateway, admin, "slow-limits")
    return "slow-limits"


@pytest.fixture(scope="module")
def big_standin(service_dir: Path) -> Iterator[StandinProcess]:
    """A stand-in whose answers are 3,000 tokens long unless the request caps them."""
    proc = StandinProcess(
        log_path=service_dir / "limits-big-standin.log",
        extra=["--parallel", "64", "--completion-tokens", "3000"],
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def big_model(admin: Admin, big_standin: StandinProcess, gateway: GatewayProcess) -> str:
    admin.ensure_model(
        "big-limits",
        "llama3:8b",
        backend_url=big_standin.url,
        input_price_per_mtok="1000",
        output_price_per_mtok="1000",
    )
    wait_alias(gateway, admin, "big-limits")
    return "big-limits"


def wait_alias(gateway: GatewayProcess, admin: Admin, alias: str) -> None:
    key = admin.create_key()["key"]
    deadline = time.monotonic() + 10
    while httpx.get(f"{gateway.url}/v1/models/{alias}", headers=auth(key)).status_code != 200:
        assert time.monotonic() < deadline, "the new alias never reached the gateway"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def short_lease(gateways: Gateways) -> GatewayProcess:
    """A gateway whose concurrency leases last one second (renewed every third of it)."""
    return gateways.start(TOLLGATE_CONCURRENCY_LEASE_SECONDS="1")


def chat_body(model: str, stream: bool = False, max_tokens: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello"}],
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def auth(key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


async def burst(
    url: str, key: str, bodies: list[dict[str, Any]], headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    sent = auth(key, **(headers or {}))
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as http:
        return await asyncio.gather(
            *(http.post(url + "/v1/chat/completions", json=b, headers=sent) for b in bodies)
        )


def usage_rows(dsn: str, key_id: str, columns: str, at_least: int = 1) -> list[tuple[Any, ...]]:
    """A key's usage rows, oldest first, once `at_least` of them reached Postgres (or after
    10 s): the writers take them from Redis in batches."""
    query = sql.SQL("SELECT {} FROM usage_events WHERE key_id = %s ORDER BY ts").format(
        sql.SQL(columns)
    )
    deadline = time.monotonic() + 10
    while True:
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(query, (key_id,)).fetchall()
        if len(rows) >= at_least or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def spent_by(dsn: str, key_id: str, expected_rows: int) -> tuple[int, Decimal, int]:
    """Usage rows, their cost and tokens for a key, once `expected_rows` have been written."""
    deadline = time.monotonic() + 15
    while True:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT count(*), coalesce(sum(cost), 0), "
                "coalesce(sum(prompt_tokens + completion_tokens), 0) "
                "FROM usage_events WHERE key_id = %s",
                (key_id,),
            ).fetchone()
        assert row is not None
        if row[0] >= expected_rows or time.monotonic() > deadline:
            return int(row[0]), Decimal(row[1]), int(row[2])
        time.sleep(0.1)


# -- the limiter's identities are ours ---------------------------------------------------


def test_repeated_request_id_does_not_bypass_rpm(
    gateway: GatewayProcess, admin: Admin, chat_model: str
) -> None:
    key = admin.create_key(rate_limit_rpm=3)["key"]
    statuses = []
    for _ in range(10):
        r = httpx.post(
            gateway.url + "/v1/chat/completions",
            json=chat_body(chat_model, max_tokens=1),
            headers=auth(key, **SAME_ID),
            timeout=30,
        )
        assert r.headers["x-request-id"] == SAME_ID["x-request-id"]  # still echoed
        statuses.append(r.status_code)
    assert statuses == [200] * 3 + [429] * 7


def test_repeated_request_id_does_not_bypass_concurrency(
    gateway: GatewayProcess, admin: Admin, slow_model: str, slow_standin: StandinProcess
) -> None:
    key = admin.create_key(concurrency_limit=2)["key"]
    httpx.post(slow_standin.url + "/_standin/reset").raise_for_status()
    bodies = [chat_body(slow_model, stream=True, max_tokens=20)] * 10
    responses = asyncio.run(burst(gateway.url, key, bodies, SAME_ID))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 2, statuses
    assert statuses.count(429) == 8
    stats = httpx.get(slow_standin.url + "/_standin/stats").json()
    assert stats["max_in_flight"] <= 2, stats


def test_repeated_request_id_does_not_bypass_the_budget(
    gateway: GatewayProcess, admin: Admin, slow_model: str, migrated_dsn: str
) -> None:
    budget = Decimal("0.5")  # 500 tokens at 1000 per million; one answer is about 55
    key = admin.create_key(monthly_budget=str(budget))
    bodies = [chat_body(slow_model, max_tokens=50)] * 30
    responses = asyncio.run(burst(gateway.url, key["key"], bodies, SAME_ID))
    statuses = [r.status_code for r in responses]
    assert 429 in statuses, statuses
    _, spent, _ = spent_by(migrated_dsn, key["id"], statuses.count(200))
    assert spent <= budget, (spent, statuses)


# -- leases live as long as their request ------------------------------------------------


def test_stream_five_times_the_lease_keeps_its_slot(
    short_lease: GatewayProcess, admin: Admin, slow_model: str
) -> None:
    key = admin.create_key(concurrency_limit=1)["key"]
    url = short_lease.url + "/v1/chat/completions"
    body = chat_body(slow_model, stream=True, max_tokens=130)  # 6.5 s at 20 tokens/s
    refused = 0
    with httpx.stream("POST", url, json=body, headers=auth(key), timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines).startswith("data:")
        started = time.monotonic()
        while time.monotonic() - started < 5.5:  # 5.5 leases of one second
            second = httpx.post(
                url, json=chat_body(slow_model, max_tokens=1), headers=auth(key), timeout=30
            )
            assert second.status_code == 429, f"admitted at {time.monotonic() - started:.1f}s"
            assert second.json()["error"]["code"] == "concurrency_limit_exceeded"
            refused += 1
            time.sleep(0.25)
        rest = list(lines)
    assert "data: [DONE]" in rest
    assert refused >= 10
    # settled at the end: the slot is free again
    after = httpx.post(url, json=chat_body(slow_model, max_tokens=1), headers=auth(key), timeout=30)
    assert after.status_code == 200


def test_non_streamed_disconnect_cancels_the_upstream_and_frees_the_slot(
    gateway: GatewayProcess,
    admin: Admin,
    slow_model: str,
    slow_standin: StandinProcess,
    migrated_dsn: str,
) -> None:
    key = admin.create_key(concurrency_limit=1)
    httpx.post(slow_standin.url + "/_standin/reset").raise_for_status()
    url = gateway.url + "/v1/chat/completions"
    body = chat_body(slow_model, max_tokens=300)  # 15 s of generation if nobody stops it
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
        httpx.post(url, json=body, headers=auth(key["key"]), timeout=httpx.Timeout(30, read=1))
    deadline = time.monotonic() + 5
    while True:
        stats = httpx.get(slow_standin.url + "/_standin/stats").json()
        if stats["in_flight"] == 0:
            break
        assert time.monotonic() < deadline, f"the model server still generates: {stats}"
        time.sleep(0.1)
    assert stats["cancelled"] == 1, stats
    again = httpx.post(
        url, json=chat_body(slow_model, max_tokens=1), headers=auth(key["key"]), timeout=30
    )
    assert again.status_code == 200
    rows = usage_rows(migrated_dsn, key["id"], "status, error_class", at_least=2)
    assert rows and rows[0] == (499, "client_disconnected"), rows


# -- tokens and money: reserved for the whole request, the cap sent upstream -------------


def test_tpm_burst_stays_within_the_limit(
    gateway: GatewayProcess, admin: Admin, big_model: str, migrated_dsn: str
) -> None:
    key = admin.create_key(tpm_limit=100)
    responses = asyncio.run(burst(gateway.url, key["key"], [chat_body(big_model)] * 50))
    statuses = [r.status_code for r in responses]
    assert 200 in statuses, statuses
    for r in responses:
        if r.status_code == 429:
            assert r.json()["error"]["type"] == "tokens", r.text
        else:
            assert r.json()["usage"]["total_tokens"] <= 100
            assert int(r.headers["x-ratelimit-remaining-tokens"]) < 100
    _, _, tokens = spent_by(migrated_dsn, key["id"], statuses.count(200))
    assert tokens <= 100, (tokens, statuses)


def test_a_short_request_continuing_a_long_stored_response_reserves_its_whole_prompt(
    gateway: GatewayProcess, admin: Admin, big_model: str, migrated_dsn: str
) -> None:
    """`previous_response_id` sends Ollama the stored conversation too: a burst of short
    bodies continuing a long one stays within the TPM limit (over 3x when only the
    body was counted: 7,024 tokens charged against 2,000)."""
    key = admin.create_key(tpm_limit=2000)
    url = gateway.url + "/v1/responses"
    headers = auth(key["key"])
    first = httpx.post(
        url,
        json={"model": big_model, "input": "lorem " * 300, "max_output_tokens": 20},
        headers=headers,
        timeout=30,
    )
    assert first.status_code == 200, first.text
    assert first.json()["usage"]["input_tokens"] >= 300
    body = {
        "model": big_model,
        "input": "go on",
        "max_output_tokens": 1,
        "previous_response_id": first.json()["id"],
    }

    async def chained() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as http:
            return await asyncio.gather(
                *(http.post(url, json=body, headers=headers) for _ in range(20))
            )

    responses = asyncio.run(chained())
    statuses = [r.status_code for r in responses]
    _, _, tokens = spent_by(migrated_dsn, key["id"], 1 + statuses.count(200))
    assert tokens <= 2000, (tokens, statuses)
    assert 200 in statuses and 429 in statuses, statuses
    for r in responses:
        if r.status_code == 429:
            assert r.json()["error"]["type"] == "tokens", r.text
        else:
            assert r.json()["usage"]["input_tokens"] > 300  # the stored conversation came too


TINY_PNG = (  # a 1x1 PNG: a few dozen bytes, and hundreds of prompt tokens to a vision model
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5E"
    "rkJggg=="
)


def test_images_reserve_tokens_per_image_not_per_byte(
    gateway: GatewayProcess, admin: Admin, big_model: str, big_standin: StandinProcess
) -> None:
    """Tiny images cannot slip past a TPM limit (by their bytes they reserved a few dozen
    tokens), and a photo is not refused for its size (by its bytes: tens of thousands)."""
    stats = big_standin.url + "/_standin/stats"
    tiny = admin.create_key(tpm_limit=3000)
    parts = [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + TINY_PNG}}]
    body = chat_body(big_model, max_tokens=1)
    body["messages"][0]["content"] = [{"type": "text", "text": "what is this?"}, *parts * 2]
    before = httpx.get(stats).json()["requests_total"]
    refused = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=auth(tiny["key"]))
    assert refused.status_code == 429, refused.text  # 2 x 2,048 tokens reserved > 3,000
    assert refused.json()["error"]["type"] == "tokens"
    assert httpx.get(stats).json()["requests_total"] == before  # it never reached the model

    photo = admin.create_key(tpm_limit=5000)
    native = {
        "model": big_model,
        "stream": False,
        "messages": [{"role": "user", "content": "what is this?", "images": ["A" * 100_000]}],
    }
    r = httpx.post(gateway.url + "/api/chat", json=native, headers=auth(photo["key"]), timeout=30)
    assert r.status_code == 200, r.text  # 100 kB of base64 would have reserved 50,000 tokens
    sent = httpx.get(big_standin.url + "/_standin/requests?path=/api/chat&limit=1").json()
    # the output cap sent is what the key has left once the image's 2,048 are reserved
    assert 0 < sent["requests"][-1]["body"]["options"]["num_predict"] <= 5000 - 2048


def test_single_big_request_is_capped_to_what_the_key_has_left(
    gateway: GatewayProcess,
    admin: Admin,
    big_model: str,
    big_standin: StandinProcess,
    migrated_dsn: str,
) -> None:
    key = admin.create_key(tpm_limit=100)
    url = gateway.url + "/v1/chat/completions"
    r = httpx.post(url, json=chat_body(big_model, max_tokens=5000), headers=auth(key["key"]))
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["total_tokens"] <= 100, usage
    assert r.json()["choices"][0]["finish_reason"] == "length"
    # what this request reserved is gone from what the key has left
    assert int(r.headers["x-ratelimit-remaining-tokens"]) <= 100 - usage["total_tokens"]
    sent = httpx.get(big_standin.url + "/_standin/requests?path=/v1/chat/completions&limit=1")
    assert sent.json()["requests"][-1]["body"]["max_tokens"] <= 100
    # a prompt larger than the limit never reaches the model server
    before = httpx.get(big_standin.url + "/_standin/stats").json()["requests_total"]
    huge = chat_body(big_model)
    huge["messages"][0]["content"] = "lorem " * 2000
    refused = httpx.post(url, json=huge, headers=auth(key["key"]))
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "tokens"
    assert httpx.get(big_standin.url + "/_standin/stats").json()["requests_total"] == before
    _, _, tokens = spent_by(migrated_dsn, key["id"], 1)
    assert tokens <= 100


def test_native_api_gets_the_cap_as_num_predict(
    gateway: GatewayProcess, admin: Admin, big_model: str, big_standin: StandinProcess
) -> None:
    key = admin.create_key(tpm_limit=100)
    body = {
        "model": big_model,
        "stream": False,
        "messages": [{"role": "user", "content": "hello"}],
        "options": {"temperature": 0.5},
    }
    r = httpx.post(gateway.url + "/api/chat", json=body, headers=auth(key["key"]))
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["prompt_eval_count"] + data["eval_count"] <= 100
    sent = httpx.get(big_standin.url + "/_standin/requests?path=/api/chat&limit=1").json()
    options = sent["requests"][-1]["body"]["options"]
    assert options["temperature"] == 0.5  # the client's options are kept
    assert options["num_predict"] <= 100


def test_budget_burst_stays_within_the_budget(
    gateway: GatewayProcess, admin: Admin, big_model: str, migrated_dsn: str
) -> None:
    budget = Decimal("0.2")  # 200 tokens at 1000 per million; an uncapped answer is 3,000
    key = admin.create_key(monthly_budget=str(budget))
    responses = asyncio.run(burst(gateway.url, key["key"], [chat_body(big_model)] * 20))
    statuses = [r.status_code for r in responses]
    assert 200 in statuses and 429 in statuses, statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "insufficient_quota"
    _, spent, _ = spent_by(migrated_dsn, key["id"], statuses.count(200))
    assert spent <= budget, (spent, statuses)
    budget_view = admin.http.get(f"/admin/keys/{key['id']}/budget").json()
    assert Decimal(budget_view["spent"]) == spent


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_early_disconnect_bills_the_prompt(
    gateway: GatewayProcess, admin: Admin, slow_model: str, migrated_dsn: str, path: str
) -> None:
    key = admin.create_key()
    body = chat_body(slow_model, stream=True)
    body["messages"][0]["content"] = "lorem " * 2000  # the stand-in counts 2,004 tokens
    with httpx.stream(
        "POST", gateway.url + path, json=body, headers=auth(key["key"]), timeout=30
    ) as response:
        assert response.status_code == 200
        assert next(response.iter_lines())  # the first chunk, then the client leaves
    rows = usage_rows(migrated_dsn, key["id"], "status, prompt_tokens, completion_tokens, cost")
    assert rows
    status, prompt, completion, cost = rows[0]
    assert status == 499
    assert prompt >= 2004  # at least the real prompt: the estimate, as nothing counted it
    assert completion >= 1
    assert Decimal(cost) >= Decimal(1000) * (prompt + completion) / 1_000_000


# -- Redis trouble: the circuit breaker ----------------------------------------------------


@pytest.fixture
def frozen_valkey(service_dir: Path) -> Iterator[LocalValkey]:
    """A Valkey of its own, to be frozen with SIGSTOP (and thawed at the end)."""
    redis = LocalValkey(service_dir / f"frozen-valkey-{time.monotonic_ns()}")
    redis.start()
    yield redis
    assert redis.proc is not None
    os.kill(redis.proc.pid, signal.SIGCONT)
    redis.stop()


def freeze(redis: LocalValkey) -> None:
    assert redis.proc is not None
    os.kill(redis.proc.pid, signal.SIGSTOP)


def unchecked(gateway: GatewayProcess) -> float:
    """Requests the breaker answered without asking Redis (the gateway's own counter)."""
    text = httpx.get(gateway.metrics_url, timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tollgate_limits_unchecked_total"
    )


def breaker_state(gateway: GatewayProcess) -> str:
    state: str = httpx.get(gateway.url + "/readyz", timeout=10).json()["checks"]["redis_breaker"]
    return state


@pytest.mark.parametrize("policy", ["open", "closed"])
def test_frozen_redis_opens_the_breaker_and_requests_stop_waiting(
    gateways: Gateways, admin: Admin, chat_model: str, frozen_valkey: LocalValkey, policy: str
) -> None:
    timeout = 1.0  # what each request would wait for a frozen Redis without the breaker
    gw = gateways.start(
        REDIS_URL=frozen_valkey.url,
        TOLLGATE_REDIS_FAILURE_POLICY=policy,
        TOLLGATE_REDIS_TIMEOUT_SECONDS=str(timeout),
    )
    key = admin.create_key(rate_limit_rpm=1000)["key"]
    url = gw.url + "/v1/chat/completions"

    def post() -> httpx.Response:
        return httpx.post(url, json=chat_body(chat_model, max_tokens=1), headers=auth(key))

    assert post().status_code == 200
    assert breaker_state(gw) == "closed"
    freeze(frozen_valkey)
    expected = 200 if policy == "open" else 503
    waited = [post() for _ in range(3)]  # these wait for the timeout, then follow the policy
    assert [r.status_code for r in waited] == [expected] * 3
    assert breaker_state(gw) == "open"
    skipped_before = unchecked(gw)
    served = [post() for _ in range(10)]
    assert [r.status_code for r in served] == [expected] * 10
    if policy == "closed":
        assert served[0].json()["error"]["code"] == "limits_unavailable"
    # Requests the breaker kept away from Redis did not wait for it; only the probes (one per
    # backoff window: 1 s, then 2 s, 4 s...) may have asked the frozen Redis and waited.
    assert unchecked(gw) - skipped_before >= 7
    log = gw.log_path.read_text() if gw.log_path else ""
    assert "circuit breaker open" in log
    # thawed, a probe closes the breaker and limits are enforced again
    assert frozen_valkey.proc is not None
    os.kill(frozen_valkey.proc.pid, signal.SIGCONT)
    limited = admin.create_key(rate_limit_rpm=1)["key"]
    deadline = time.monotonic() + 15
    while True:
        codes = [
            httpx.post(
                url, json=chat_body(chat_model, max_tokens=1), headers=auth(limited)
            ).status_code
            for _ in range(2)
        ]
        if codes[-1] == 429:
            break
        assert time.monotonic() < deadline, f"limits not enforced after Redis thawed: {codes}"
        time.sleep(0.3)
    assert breaker_state(gw) == "closed"


# -- revocation reaches streams in progress ----------------------------------------------


@pytest.mark.parametrize(
    ("path", "how"), [("/v1/chat/completions", "revoke"), ("/api/chat", "disable")]
)
def test_revoked_key_ends_its_open_stream(
    gateway: GatewayProcess,
    admin: Admin,
    slow_model: str,
    migrated_dsn: str,
    path: str,
    how: str,
) -> None:
    key = admin.create_key()
    body = chat_body(slow_model, stream=True, max_tokens=400)  # 20 s if nothing stops it
    with httpx.stream(
        "POST", gateway.url + path, json=body, headers=auth(key["key"]), timeout=30
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines)
        if how == "revoke":
            assert admin.http.delete(f"/admin/keys/{key['id']}").status_code == 204
        else:
            disabled = admin.http.patch(f"/admin/keys/{key['id']}", json={"disabled": True})
            assert disabled.status_code == 200
        changed_at = time.monotonic()
        rest = [line for line in lines if line.strip()]
        ended_after = time.monotonic() - changed_at
    assert ended_after < 5, ended_after  # about a second; the answer had 19 s to go
    last = rest[-1]
    if path == "/api/chat":
        assert "revoked or disabled" in json.loads(last)["error"]
    else:
        assert json.loads(last.removeprefix("data:"))["error"]["code"] == "invalid_api_key"
    assert usage_rows(migrated_dsn, key["id"], "status, error_class")[:1] == [(401, "key_revoked")]
