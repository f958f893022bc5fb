"""Every panel of the gateway dashboards returns data from a real Prometheus that scraped real
gateways under traffic (the openai client, Ollama's native API, a limited key, a bad key and a
model whose upstream is down, so that error and limit panels have something to show).

Template variables are substituted as Grafana would: `$job` by the scrape job, `$alias` by
its "All" value, `$namespace` by the empty string (a static scrape has no namespace label; the
ServiceMonitor adds it, and `namespace=""` matches series without it), and `$__rate_interval`
and `$__range` by windows that cover the traffic.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from chart_helpers import CHART, board, panel_queries

from tollgate_dev.plugins.services import Admin, Gateways
from tollgate_dev.proc import free_port
from tollgate_dev.servers.programs import GatewayProcess, StandinProcess
from tollgate_dev.servers.prometheus import PrometheusServer

JOB = "tollgate-gateway"
DOWN_ALIAS = "model-with-upstream-down"
ROUTED_ALIAS = "model-over-replicas"
POOLED_ALIAS = "model-in-a-small-pool"
VARIABLES = {
    "$namespace": "",
    "$job": JOB,
    "$alias": ".*",
    "$__rate_interval": "5m",
    "$__range": "15m",
}
GATEWAY_BOARDS = ("tollgate-gateway", "tollgate-keys")


def substitute(expr: str) -> str:
    # Longest names first: $__rate_interval before a hypothetical $__rate.
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def traffic(gateway: GatewayProcess, key: str, limited_key: str, model: str) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    for _ in range(3):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    for _ in client.chat.completions.create(
        model=model, stream=True, messages=[{"role": "user", "content": "stream"}]
    ):
        pass
    client.embeddings.create(model="test-embedding-small", input="hello")
    httpx.post(
        gateway.url + "/api/chat",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False},
        timeout=30,
    ).raise_for_status()
    with pytest.raises(openai.APIStatusError) as down:
        client.chat.completions.create(
            model=DOWN_ALIAS, messages=[{"role": "user", "content": "anyone?"}]
        )
    assert down.value.status_code >= 500
    limited = openai.OpenAI(base_url=gateway.url + "/v1", api_key=limited_key, max_retries=0)
    limited.chat.completions.create(model=model, messages=[{"role": "user", "content": "1"}])
    with pytest.raises(openai.RateLimitError):
        limited.chat.completions.create(model=model, messages=[{"role": "user", "content": "2"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=gateway.url + "/v1", api_key="tg-not-a-key", max_retries=0
        ).models.list()
    httpx.get(gateway.url + "/readyz", timeout=10)


def routed_traffic(gateway: GatewayProcess, key: str, alias: str, flaky: StandinProcess) -> None:
    """Requests over a pool of replicas: one answers 503 once (a retry), one is a closed
    port (refused: retried, then ejected)."""
    httpx.post(
        flaky.url + "/_standin/faults",
        json={"kind": "fail", "status": 503, "path": "/v1/chat/completions", "times": 1},
    ).raise_for_status()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    for _ in range(6):
        client.chat.completions.create(model=alias, messages=[{"role": "user", "content": "hi"}])


def pooled_traffic(gateway: GatewayProcess, key: str, replica: StandinProcess) -> None:
    """A pool of one slot: one request holds it (the replica answers it slowly), the next
    waits past its deadline (a queue wait, a rejection)."""
    httpx.post(
        replica.url + "/_standin/faults",
        json={"kind": "delay", "delay_ms": 1500, "path": "/v1/chat/completions", "times": 1},
    ).raise_for_status()
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": POOLED_ALIAS, "messages": [{"role": "user", "content": "hi"}]}
    url = gateway.url + "/v1/chat/completions"

    def send() -> int:
        return httpx.post(url, headers=headers, json=body, timeout=30).status_code

    def arrived() -> int:
        stats = httpx.get(replica.url + "/_standin/stats", timeout=5).json()
        return int(stats["requests"].get("/v1/chat/completions", 0))

    before = arrived()
    holder: list[int] = []
    thread = threading.Thread(target=lambda: holder.append(send()))
    thread.start()
    deadline = time.monotonic() + 10
    while arrived() == before and time.monotonic() < deadline:  # until the holder has the slot
        time.sleep(0.05)
    assert send() == 503
    thread.join(30)
    assert holder == [200]


@pytest.fixture(scope="module")
def replicas(service_dir: Path) -> Iterator[list[StandinProcess]]:
    procs = [StandinProcess(log_path=service_dir / f"dashboards-replica-{i}.log") for i in range(2)]
    for proc in procs:
        proc.start()
    yield procs
    for proc in procs:
        proc.stop()


@pytest.fixture(scope="module")
def per_key_gateway(gateways: Gateways) -> GatewayProcess:
    # A usage stream of its own: its rows are drained (and its flush histogram filled) by
    # this gateway, not by another gateway of the session's database.
    return gateways.start(TOLLGATE_METRICS_PER_KEY="true", TOLLGATE_USAGE_STREAM="tg:usage:boards")


@pytest.fixture(scope="module")
def prometheus(
    gateway: GatewayProcess,
    per_key_gateway: GatewayProcess,
    admin: Admin,
    chat_model: str,
    service_dir: Path,
    replicas: list[StandinProcess],
) -> Iterator[PrometheusServer]:
    new_key: Callable[..., dict[str, Any]] = admin.create_key
    # An alias whose Ollama is a closed port: connect errors, 5xx answers.
    admin.ensure_model(DOWN_ALIAS, "llama3:8b", backend_url=f"http://127.0.0.1:{free_port()}")
    # An alias over a pool of replicas, one of them down (the routing row).
    pool = [{"name": f"replica-{i}", "url": r.url} for i, r in enumerate(replicas)]
    pool.append({"name": "replica-down", "url": f"http://127.0.0.1:{free_port()}"})
    admin.ensure_model(
        ROUTED_ALIAS,
        "llama3:8b",
        replicas=pool,
        routing={"pool": "boards/pool", "policy": "roundRobin"},
    )
    # An alias whose pool has one slot (the pool queue row).
    admin.ensure_model(
        POOLED_ALIAS,
        "llama3:8b",
        backend_url=replicas[1].url,
        routing={"pool": "boards/queue", "slots": 1, "max_wait_seconds": 0.3},
    )
    server = PrometheusServer(
        service_dir / "prometheus-dashboards",
        {JOB: [g.metrics_address for g in (gateway, per_key_gateway)]},
    )
    server.start()
    try:
        # Traffic between scrapes, so that rate() sees counters move.
        assert server.wait_until(f'count(up{{job="{JOB}"}} == 1) == 2', timeout=60)
        for gw in (gateway, per_key_gateway):
            traffic(gw, new_key()["key"], new_key(rate_limit_rpm=1)["key"], chat_model)
            routed_traffic(gw, new_key()["key"], ROUTED_ALIAS, replicas[0])
            pooled_traffic(gw, new_key()["key"], replicas[1])
        server.wait_for_scrape(JOB, time.time())  # the counters as they are now, then more
        for gw in (gateway, per_key_gateway):
            traffic(gw, new_key()["key"], new_key(rate_limit_rpm=1)["key"], chat_model)
            routed_traffic(gw, new_key()["key"], ROUTED_ALIAS, replicas[0])
            pooled_traffic(gw, new_key()["key"], replicas[1])
        assert server.wait_until(f'count_over_time(up{{job="{JOB}"}}[1m]) >= 5', timeout=60)
        server.wait_for_scrape(JOB, time.time() + 1)  # a couple more scrapes after the last request
        yield server
    finally:
        server.stop()


def test_dashboards_are_valid_grafana_json() -> None:
    for path in (CHART / "dashboards").glob("*.json"):
        data = json.loads(path.read_text())
        assert data["uid"] == path.stem
        assert data["schemaVersion"] >= 36
        ids = [p["id"] for p in data["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        names = [v["name"] for v in data["templating"]["list"]]
        assert names[0] == "datasource"
        for panel in data["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["description"], f"{path.name}: {panel['title']} has no description"
            for target in panel["targets"]:
                used = set(re.findall(r"\$(\w+)", target["expr"])) - {
                    "__rate_interval",
                    "__range",
                }
                assert used <= set(names), f"{panel['title']}: unknown variables {used}"


@pytest.mark.parametrize(
    ("title", "expr"),
    [pytest.param(t, e, id=f"{uid}: {t}") for uid in GATEWAY_BOARDS for t, e in panel_queries(uid)],
)
def test_every_gateway_panel_returns_data(
    prometheus: PrometheusServer, title: str, expr: str
) -> None:
    query = substitute(expr)
    deadline = time.monotonic() + 20
    while True:
        result = prometheus.query(query)
        values = [float(r["value"][1]) for r in result]
        if any(not math.isnan(v) for v in values) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert result, f"{title}: no series for {query}"
    assert any(not math.isnan(v) for v in values), f"{title}: only NaN for {query}"


@pytest.mark.parametrize("uid", GATEWAY_BOARDS)
def test_template_variables_find_values(prometheus: PrometheusServer, uid: str) -> None:
    """The job and alias pickers list something (namespace needs a ServiceMonitor's labels)."""
    for variable in board(uid)["templating"]["list"]:
        if variable["type"] != "query" or variable["name"] == "namespace":
            continue
        match = re.fullmatch(r"label_values\((.*), (\w+)\)", variable["query"]["query"])
        assert match, variable["query"]["query"]
        selector, label = substitute(match.group(1)), match.group(2)
        response = httpx.get(
            f"{prometheus.url}/api/v1/label/{label}/values",
            params={"match[]": selector},
            timeout=10,
        ).json()
        assert response["data"], f"{uid}: ${variable['name']} would list nothing"


def test_operator_dashboard_uses_only_operator_metrics() -> None:
    """Operator panels are checked against a running operator in test_operator_dashboard.py;
    here, only that they query the operator's own metric names."""
    from tollgate_operator import metrics

    known = {
        collector._name  # type: ignore[attr-defined]
        for collector in vars(metrics).values()
        if hasattr(collector, "_name")
    }
    for title, expr in panel_queries("tollgate-operator"):
        names = set(re.findall(r"\b(tollgate_operator_[a-z_]+)", expr))
        assert names, title
        for name in names:
            base = re.sub(r"_(bucket|count|sum|total)$", "", name)
            assert base in known or name in known, f"{title}: {name} is not an operator metric"
