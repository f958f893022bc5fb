"""Prometheus metrics: a real Prometheus scrapes gateways under traffic."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tollgate_dev.plugins.services import Admin, Gateways
from tollgate_dev.proc import free_port
from tollgate_dev.servers.programs import GatewayProcess
from tollgate_dev.servers.prometheus import PrometheusServer

NewKey = Callable[..., dict[str, Any]]

# The metric families the README documents; each must be scraped.
DOCUMENTED = [
    "tollgate_requests_total",
    "tollgate_request_duration_seconds_bucket",
    "tollgate_time_to_first_token_seconds_bucket",
    "tollgate_tokens_total",
    "tollgate_cost_total",
    "tollgate_in_flight_requests",
    "tollgate_limit_refusals_total",
    "tollgate_upstream_errors_total",
    "tollgate_auth_failures_total",
    "tollgate_usage_queue_depth",
    "tollgate_usage_flush_duration_seconds_bucket",
    "tollgate_usage_events_written_total",
    "tollgate_redis_duration_seconds_bucket",
    "tollgate_redis_up",
    "tollgate_db_duration_seconds_bucket",
]


def traffic(gateway: GatewayProcess, key: str, model: str, admin: Admin) -> None:
    admin.ensure_model("unplugged", "llama3:8b", backend_url=f"http://127.0.0.1:{free_port()}")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="unplugged", messages=[{"role": "user", "content": "x"}]
        )
    for _ in range(3):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    list(
        client.chat.completions.create(
            model=model, stream=True, messages=[{"role": "user", "content": "x"}]
        )
    )
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.url + "/v1", api_key="tg-bad", max_retries=0).models.list()
    httpx.get(gateway.url + "/readyz")


def test_prometheus_scrapes_documented_metrics(
    gateway: GatewayProcess, new_key: NewKey, chat_model: str, service_dir: Path, admin: Admin
) -> None:
    key = new_key(rate_limit_rpm=5)["key"]
    traffic(gateway, key, chat_model, admin)
    prometheus = PrometheusServer(
        service_dir / "prometheus",
        {"tollgate-gateway": [gateway.metrics_address]},
    )
    prometheus.start()
    try:
        assert prometheus.wait_until('up{job="tollgate-gateway"} == 1')
        missing = [name for name in DOCUMENTED if not prometheus.wait_until(name, timeout=10)]
        assert not missing, f"not scraped: {missing}"
        ok = prometheus.query(
            f'tollgate_requests_total{{alias="{chat_model}",endpoint="chat.completions",'
            'status="200"}'
        )
        assert float(ok[0]["value"][1]) >= 4
        refused = prometheus.query('tollgate_limit_refusals_total{reason="requests"}')
        assert float(refused[0]["value"][1]) >= 1
    finally:
        prometheus.stop()


def test_metrics_add_up_across_worker_processes(
    gateways: Gateways, new_key: NewKey, chat_model: str, service_dir: Path
) -> None:
    multiproc = service_dir / "multiproc"
    gateway = gateways.start(TOLLGATE_WORKERS="2", PROMETHEUS_MULTIPROC_DIR=str(multiproc))
    key = new_key()["key"]
    # a new connection per request, so the kernel spreads them over both workers
    fresh = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
    client = openai.OpenAI(
        base_url=gateway.url + "/v1", api_key=key, max_retries=0, http_client=fresh
    )
    for _ in range(20):
        client.chat.completions.create(
            model=chat_model, messages=[{"role": "user", "content": "x"}]
        )
    pids = {p.stem.split("_")[-1] for p in multiproc.glob("counter_*.db")}
    assert len(pids) == 2, "both workers should have served requests"

    def total() -> float:
        text = fresh.get(gateway.metrics_url).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("tollgate_requests_total{") and f'alias="{chat_model}"' in line
        )

    # every scrape, whichever worker answers it, sees all 20 requests
    assert {total() for _ in range(8)} == {20.0}
    fresh.close()


def test_metrics_are_not_served_on_the_serving_port(gateway: GatewayProcess) -> None:
    """They name every alias with its traffic and cost; tenants reach the serving port."""
    response = httpx.get(gateway.url + "/metrics")
    assert response.status_code == 404
    assert "tollgate_requests_total" not in response.text
    assert "tollgate_requests_total" in httpx.get(gateway.metrics_url).text


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of one metric family in a /metrics text, by its labels."""
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            head, _, value = line.rpartition(" ")
            labels = re.findall(r'(\w+)="([^"]*)"', head)
            out[tuple(sorted(labels))] = float(value)
    return out


def test_every_answer_is_counted_by_status_and_error_class(
    gateways: Gateways, new_key: NewKey, chat_model: str, admin: Admin
) -> None:
    """A scripted mix of answers: each status (and 429s by limit) with its count; refusals
    are requests too, and nothing stays in flight afterwards."""
    gateway = gateways.start()  # its own counters
    admin.ensure_model("unplugged", "llama3:8b", backend_url=f"http://127.0.0.1:{free_port()}")
    limited = new_key(rate_limit_rpm=4)["key"]
    broke = new_key(monthly_budget="0.00000001")["key"]
    url = gateway.url + "/v1/chat/completions"

    def post(key: str, body: dict[str, Any], stream: bool = False) -> int:
        headers = {"Authorization": f"Bearer {key}"}
        if not stream:
            return httpx.post(url, headers=headers, json=body, timeout=30).status_code
        with httpx.stream("POST", url, headers=headers, json=body, timeout=30) as response:
            for _ in response.iter_bytes():
                pass
            return response.status_code

    chat = {"model": chat_model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4}
    got = [
        post(limited, chat),
        post(limited, chat),
        post(limited, {**chat, "stream": True}, stream=True),
        post(limited, {**chat, "model": "unplugged"}),  # 502: nothing listens there
        post(limited, chat),  # 429: 4 a minute
        post(limited, chat),  # 429
        post(limited, {"model": chat_model}),  # 400: no messages
        post(limited, {"messages": []}),  # 400: no model
        post(limited, {**chat, "model": "no-such-model"}),  # 404
        post("tg-not-a-key", chat),  # 401
        post(broke, chat),  # 429: budget
    ]
    assert got == [200, 200, 200, 502, 429, 429, 400, 400, 404, 401, 429]

    text = httpx.get(gateway.metrics_url).text
    counted = {
        (d["alias"], d["status"], d["error_class"]): v
        for labels, v in samples(text, "tollgate_requests_total").items()
        if (d := dict(labels))["endpoint"] == "chat.completions"
    }
    assert counted == {
        (chat_model, "200", ""): 3.0,
        ("unplugged", "502", "upstream_unreachable"): 1.0,
        (chat_model, "429", "limit_requests"): 2.0,
        ("", "400", "missing_required_parameter"): 2.0,
        ("", "404", "model_not_found"): 1.0,
        ("", "401", "invalid_api_key"): 1.0,
        (chat_model, "429", "limit_budget"): 1.0,
    }
    refusals = {
        dict(labels)["reason"]: v
        for labels, v in samples(text, "tollgate_limit_refusals_total").items()
    }
    assert refusals == {"requests": 2.0, "budget": 1.0}
    assert samples(text, "tollgate_in_flight_requests") == {(): 0.0}

    # A client that leaves mid-stream is not left "in flight" either.
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {new_key()['key']}"},
        json={**chat, "stream": True, "max_tokens": 2000},
        timeout=30,
    ) as response:
        next(response.iter_bytes())
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(gateway.metrics_url).text
        gauge = samples(text, "tollgate_in_flight_requests")
        if gauge == {(): 0.0} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert gauge == {(): 0.0}
    left = samples(text, "tollgate_requests_total")
    answered = sum(
        v
        for k, v in left.items()
        if ("alias", chat_model) in k and dict(k)["status"] in ("200", "499")
    )
    assert answered == 4.0  # counted once, whether it finished before the client left or not
