"""Prometheus metrics: a real Prometheus scrapes gateways under traffic."""

from __future__ import annotations

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
        refused = prometheus.query('tollgate_limit_refusals_total{reason="rate_limit_exceeded"}')
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
