"""OllamaPool autoscaling on the local control plane, with the test bed starting a stand-in per
Pod: a pool at zero has no Pods, the first chat through the gateway wakes it and is answered,
sustained load grows it to maxReplicas and no further, quiet brings it back to zero, a stream
on a replica being removed finishes, and a request held past coldStartSeconds gets 503.

The demand is what the gateways publish in Valkey (``tg:demand:{<pool>}``, one hash field per
gateway process, refreshed about every second while it has requests). The first tests put
the gateway's requests there themselves; where a test needs exact numbers (load held above
the target, a drain) it writes an entry in that format, as a gateway would, into the same
real Valkey the operator reads.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
import redis
from kubernetes import client
from operator_harness import OLLAMA_PORT, Kube, OperatorProcess, wait_for
from prometheus_client.parser import text_string_to_metric_families
from test_operator_models import model_alias, new_key, pod_ips, pool

from tollgate_dev.servers.backing import LocalValkey
from tollgate_dev.servers.programs import GatewayProcess

pytestmark = pytest.mark.cluster

MODEL = "llama3.2:1b"


class Demand:
    """One gateway's entry for a pool, refreshed every second like a gateway does."""

    def __init__(self, url: str, pool: str, instance: str = "test-gateway") -> None:
        self.redis = redis.Redis.from_url(url)
        self.pool = pool
        self.key = f"tg:demand:{{{pool}}}"
        self.instance = instance
        self.value = (0, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Demand:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.redis.delete(self.key)
        self.redis.close()

    def set(self, inflight: int, queued: int = 0) -> None:
        self.value = (inflight, queued)
        self._write()
        if queued:  # a request waits for the pool: the gateway announces it at once
            self.redis.publish("tg:demand", self.pool)

    def _write(self) -> None:
        inflight, queued = self.value
        entry = {"inflight": inflight, "queued": queued, "at": time.time()}
        self.redis.hset(self.key, self.instance, json.dumps(entry))
        self.redis.expire(self.key, 60)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._write()


@pytest.fixture
def apps(kube: Kube) -> client.AppsV1Api:
    return client.AppsV1Api(kube.api)


def autoscaled(namespace: str, name: str, **autoscaling: Any) -> dict[str, Any]:
    body = pool(namespace, name, routing={"policy": "roundRobin"})
    body["spec"]["autoscaling"] = {
        "minReplicas": 0,
        "maxReplicas": 3,
        "scaleDownDelaySeconds": 3,
        "coldStartSeconds": 120,
        "drainSeconds": 60,
        **autoscaling,
    }
    return body


def status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return dict(kube.get("ollamapools", namespace, name).get("status") or {})


def sts_replicas(apps: client.AppsV1Api, namespace: str, name: str) -> int:
    return int(apps.read_namespaced_stateful_set(name, namespace).spec.replicas)


def events(kube: Kube, namespace: str, name: str, reason: str) -> list[Any]:
    found = kube.core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name},reason={reason}"
    ).items
    return sorted(found, key=lambda e: e.metadata.creation_timestamp)


def row(db: psycopg.Connection[Any], alias: str) -> dict[str, Any] | None:
    cursor = db.execute(
        "SELECT enabled, pending, replicas, routing FROM models WHERE alias = %s", (alias,)
    )
    found = cursor.fetchone()
    names = [c.name for c in cursor.description or []]
    return dict(zip(names, found, strict=True)) if found else None


def listed(db: psycopg.Connection[Any], alias: str) -> list[str] | None:
    found = row(db, alias)
    if found is None or found["replicas"] is None:
        return None
    return [r["name"] for r in found["replicas"]]


def at_zero(kube: Kube, apps: client.AppsV1Api, namespace: str, name: str) -> bool:
    seen = status(kube, namespace, name)
    return (
        seen.get("desiredReplicas") == 0
        and seen.get("replicas") == 0
        and "demand" in seen  # the autoscaler has sampled the pool
        and sts_replicas(apps, namespace, name) == 0
    )


@contextlib.contextmanager
def slow_answers(ip: str, delay_ms: int) -> Iterator[None]:
    """The stand-in on `ip` waits `delay_ms` before each chat: a request stays in flight."""
    url = f"http://{ip}:{OLLAMA_PORT}/_standin/faults"
    fault = {"kind": "delay", "path": "/v1/chat/completions", "delay_ms": delay_ms, "times": -1}
    httpx.post(url, json=fault, timeout=5).raise_for_status()
    try:
        yield
    finally:
        with contextlib.suppress(httpx.HTTPError):
            httpx.delete(url, timeout=5)


def test_from_zero_to_max_and_back_without_losing_a_stream(
    operator: OperatorProcess,
    kube: Kube,
    apps: client.AppsV1Api,
    namespace: str,
    op_gateway: GatewayProcess,
    db: psycopg.Connection[Any],
    valkey: LocalValkey,
) -> None:
    alias = f"auto-{namespace}"
    kube.create(autoscaled(namespace, "auto"))
    kube.create(model_alias(namespace, "auto", alias, MODEL, "auto"))

    # minReplicas 0: no Pod at all, and the alias stays servable (the gateway holds requests).
    wait_for("the pool at zero", lambda: at_zero(kube, apps, namespace, "auto"))
    assert pod_ips(kube, namespace, "auto") == {}
    assert kube.core.list_namespaced_pod(namespace).items == []
    wait_for("the alias row", lambda: (row(db, alias) or {}).get("enabled"))
    found = row(db, alias)
    assert found is not None
    assert (found["enabled"], found["pending"], found["replicas"]) == (True, False, [])
    assert found["routing"]["autoscaling"] is True
    assert found["routing"]["cold_start_seconds"] == 120
    assert found["routing"]["slots"] == 1  # numParallel unset
    assert kube.condition(kube.get("modelaliases", namespace, "auto"), "Ready") is not None
    ready = kube.condition(kube.get("modelaliases", namespace, "auto"), "Ready") or {}
    assert (ready["status"], ready["reason"]) == ("True", "ScaledToZero")

    label = f"{namespace}/auto"
    with Demand(valkey.url, label) as demand:
        # A request waits for the pool: one replica, and it takes traffic once it has the model.
        demand.set(0, 1)
        wait_for("a replica", lambda: status(kube, namespace, "auto").get("desiredReplicas") == 1)
        assert "scale from zero" in status(kube, namespace, "auto")["lastScaleReason"]
        wait_for("auto-0 in the row", lambda: listed(db, alias) == ["auto-0"], timeout=90)
        key = new_key(kube, namespace, "user", [alias])
        oai = openai.OpenAI(base_url=op_gateway.url + "/v1", api_key=key, max_retries=0)

        def chat() -> str | None:
            try:
                answer = oai.chat.completions.create(
                    model=alias, messages=[{"role": "user", "content": "hi"}], max_tokens=4
                )
            except openai.APIStatusError:
                return None  # the gateway has not read the new row yet
            return answer.choices[0].message.content

        assert wait_for("a chat through the gateway", chat, timeout=30)

        # Sustained load above the target (5 requests, 1 slot each): maxReplicas, no further.
        demand.set(4, 1)
        wait_for("three replicas", lambda: sts_replicas(apps, namespace, "auto") == 3)
        seen = status(kube, namespace, "auto")
        assert seen["desiredReplicas"] == 3
        assert "capped at maxReplicas" in seen["lastScaleReason"]
        demand.set(5, 1)  # more load: a later pass sees it and still stays at the cap
        wait_for("a pass with demand 6", lambda: status(kube, namespace, "auto")["demand"] == 6)
        assert status(kube, namespace, "auto")["desiredReplicas"] == 3
        assert sts_replicas(apps, namespace, "auto") == 3
        wait_for(
            "all three in the row",
            lambda: listed(db, alias) == ["auto-0", "auto-1", "auto-2"],
            timeout=90,
        )

        # A stream in flight on auto-2 (the highest ordinal, the one a scale-down removes).
        ips = pod_ips(kube, namespace, "auto")
        outcome: dict[str, Any] = {}

        def stream() -> None:
            try:
                with httpx.stream(
                    "POST",
                    f"http://{ips['auto-2']}:{OLLAMA_PORT}/v1/chat/completions",
                    json={
                        "model": MODEL,
                        "stream": True,
                        "messages": [{"role": "user", "content": "a long answer"}],
                    },
                    timeout=60,
                ) as response:
                    outcome["status"] = response.status_code
                    outcome["body"] = response.read().decode()
            except httpx.HTTPError as exc:
                outcome["error"] = repr(exc)

        with slow_answers(ips["auto-2"], 6000):
            streaming = threading.Thread(target=stream)
            streaming.start()
            # Load drops to that one request: one replica is enough; two leave rotation first.
            demand.set(1, 0)
            wait_for(
                "a scale-down decision",
                lambda: status(kube, namespace, "auto").get("desiredReplicas") == 1,
                timeout=30,
            )
            assert status(kube, namespace, "auto").get("drainingSince")
            wait_for("the row without auto-1, auto-2", lambda: listed(db, alias) == ["auto-0"])
            # The replicas are still there while the pool has a request in flight.
            assert sts_replicas(apps, namespace, "auto") == 3
            pod = kube.core.read_namespaced_pod("auto-2", namespace)
            assert pod.metadata.deletion_timestamp is None
            streaming.join(60)
        assert "error" not in outcome, outcome
        assert outcome["status"] == 200
        assert outcome["body"].rstrip().endswith("data: [DONE]")
        assert sts_replicas(apps, namespace, "auto") == 3  # it waited for the stream

        # Load stops: once the delay has passed the pool is back at minReplicas (zero).
        demand.set(0, 0)
        wait_for("back at zero", lambda: at_zero(kube, apps, namespace, "auto"), timeout=60)
    wait_for("no Pods", lambda: pod_ips(kube, namespace, "auto") == {}, timeout=30)
    assert listed(db, alias) == []
    assert [e.type for e in events(kube, namespace, "auto", "ScaleUp")] == ["Normal", "Normal"]
    assert len(events(kube, namespace, "auto", "ScaleDown")) == 2  # 3 → 1, then 1 → 0
    removed = [e.message for e in events(kube, namespace, "auto", "ReplicasRemoved")]
    assert removed[0] == "auto-1, auto-2 removed (no request in flight)", removed
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(operator.metrics())
        for s in family.samples
    }
    assert samples[("tollgate_operator_pool_desired_replicas", (("pool", label),))] == 0
    up = (("direction", "up"), ("pool", label))
    assert samples[("tollgate_operator_scale_events_total", up)] == 2


def test_a_manual_scale_is_set_back_and_said(
    operator: OperatorProcess,
    kube: Kube,
    apps: client.AppsV1Api,
    namespace: str,
) -> None:
    kube.create(autoscaled(namespace, "manual"))
    wait_for("the pool at zero", lambda: at_zero(kube, apps, namespace, "manual"))
    apps.patch_namespaced_stateful_set_scale("manual", namespace, {"spec": {"replicas": 2}})
    wait_for(
        "the warning",
        lambda: events(kube, namespace, "manual", "ManualScaleReverted"),
        timeout=30,
    )
    wait_for("back at zero", lambda: sts_replicas(apps, namespace, "manual") == 0)
    (warning,) = events(kube, namespace, "manual", "ManualScaleReverted")[:1]
    assert warning.type == "Warning"
    # Seen before the operator's apply ("has 2 replicas, not the autoscaler's 0"), or come
    # between its read and its apply (told by the generations): set back either way.
    seen = "has 2 replicas, not the autoscaler's 0" in warning.message
    between = "changed while the operator applied it" in warning.message
    assert (seen or between) and "set back to 0" in warning.message
    # spec.replicas (`kubectl scale ollamapool`) does not count either, and says so.
    kube.patch("ollamapools", namespace, "manual", {"replicas": 3})
    wait_for("the notice", lambda: events(kube, namespace, "manual", "ReplicasIgnored"))
    assert sts_replicas(apps, namespace, "manual") == 0


def test_a_restart_during_a_scale_up_neither_loses_nor_repeats_it(
    operator: OperatorProcess,
    kube: Kube,
    apps: client.AppsV1Api,
    namespace: str,
    db: psycopg.Connection[Any],
    valkey: LocalValkey,
) -> None:
    alias = f"restart-{namespace}"
    kube.create(autoscaled(namespace, "wake", maxReplicas=2))
    kube.create(model_alias(namespace, "wake", alias, MODEL, "wake"))
    wait_for("the pool at zero", lambda: at_zero(kube, apps, namespace, "wake"))
    with Demand(valkey.url, f"{namespace}/wake") as demand:
        demand.set(0, 1)
        wait_for("the decision's Event", lambda: events(kube, namespace, "wake", "ScaleUp"))
        decided = status(kube, namespace, "wake")
        # Killed while the replica starts (the model is not even pulled yet).
        operator.kill()
        operator.start()
        wait_for("the operator to lead again", operator.leading)
        wait_for("wake-0 in the row", lambda: listed(db, alias) == ["wake-0"], timeout=90)
        demand.set(1, 0)  # the held request is being served
        wait_for("a pass", lambda: status(kube, namespace, "wake").get("demand") == 1)
        after = status(kube, namespace, "wake")
    assert (after["desiredReplicas"], after["replicas"]) == (1, 1)
    assert sts_replicas(apps, namespace, "wake") == 1
    # The same decision, carried out once: no second scale-up, no second Event.
    assert after["lastScaleTime"] == decided["lastScaleTime"]
    assert after["lastScaleReason"] == decided["lastScaleReason"]
    assert len(events(kube, namespace, "wake", "ScaleUp")) == 1


def test_two_operator_replicas_scale_once(
    operator: OperatorProcess,
    kube: Kube,
    apps: client.AppsV1Api,
    namespace: str,
    service_dir: Path,
    valkey: LocalValkey,
) -> None:
    standby = OperatorProcess(
        operator.env, log_path=service_dir / "operator-standby-scale.log", identity="standby"
    )
    standby.start()
    try:
        assert operator.leading() and not standby.leading()
        kube.create(autoscaled(namespace, "pair", maxReplicas=2))
        wait_for("the pool at zero", lambda: at_zero(kube, apps, namespace, "pair"))
        with Demand(valkey.url, f"{namespace}/pair") as demand:
            demand.set(0, 1)
            wait_for("one replica", lambda: sts_replicas(apps, namespace, "pair") == 1)
            wait_for("the Event", lambda: events(kube, namespace, "pair", "ScaleUp"))
            demand.set(1, 0)
            wait_for("a later pass", lambda: status(kube, namespace, "pair").get("demand") == 1)
            (event,) = events(kube, namespace, "pair", "ScaleUp")
            assert event.reporting_instance == operator.identity
            assert "tollgate_operator_scale_events_total{" not in standby.metrics()

            # The leader dies; the standby takes over the decision as it stands...
            operator.kill()
            wait_for("the standby to lead", standby.leading, timeout=30)
            demand.set(1, 1)
            wait_for("its first pass", lambda: status(kube, namespace, "pair").get("demand") == 2)
            assert status(kube, namespace, "pair")["desiredReplicas"] == 2
            # ...and makes only the next one.
            scale_ups = wait_for(
                "the second Event",
                lambda: (found := events(kube, namespace, "pair", "ScaleUp"))[1:] and found,
            )
            assert [e.reporting_instance for e in scale_ups] == [operator.identity, "standby"]
            assert sts_replicas(apps, namespace, "pair") == 2
    finally:
        standby.stop()
        if operator.proc is None or operator.proc.poll() is not None:
            operator.start()
        wait_for("the first replica to lead again", operator.leading)


def serves(oai: openai.OpenAI, alias: str) -> bool:
    """The gateway has read the alias's row (the change feed): it lists the model."""
    try:
        return alias in {m.id for m in oai.models.list()}
    except openai.APIError:
        return False


def test_the_first_chat_through_the_gateway_wakes_a_pool_at_zero(
    operator: OperatorProcess,
    kube: Kube,
    apps: client.AppsV1Api,
    namespace: str,
    op_gateway: GatewayProcess,
    db: psycopg.Connection[Any],
    record_property: Any,
) -> None:
    alias = f"wake-{namespace}"
    kube.create(autoscaled(namespace, "cold"))
    kube.create(model_alias(namespace, "cold", alias, MODEL, "cold"))
    wait_for("the pool at zero", lambda: at_zero(kube, apps, namespace, "cold"))
    wait_for("a servable row", lambda: (row(db, alias) or {}).get("enabled"))
    key = new_key(kube, namespace, "user", [alias])
    oai = openai.OpenAI(base_url=op_gateway.url + "/v1", api_key=key, max_retries=0, timeout=150)
    wait_for("the gateway to know the alias", lambda: serves(oai, alias))
    assert kube.core.list_namespaced_pod(namespace).items == []

    # Nothing but this request asks for the pool: the gateway holds it, publishes the demand,
    # the operator starts a replica, the replica pulls the model, the gateway serves it.
    began = time.monotonic()
    answer = oai.chat.completions.create(
        model=alias, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    waited = time.monotonic() - began
    record_property("cold_start_wait_seconds", round(waited, 3))
    print(f"cold start wait through the gateway: {waited:.2f} s")
    assert answer.choices[0].message.content
    seen = status(kube, namespace, "cold")
    assert seen["desiredReplicas"] == 1
    assert "scale from zero" in seen["lastScaleReason"]
    assert listed(db, alias) == ["cold-0"]
    (event,) = events(kube, namespace, "cold", "ScaleUp")
    assert event.message.startswith("0 → 1 replicas")
    # The gateway's cold-start histogram holds this wait.
    families = text_string_to_metric_families(httpx.get(op_gateway.metrics_url, timeout=5).text)
    samples = {
        s.name: s.value
        for f in families
        if f.name == "tollgate_pool_cold_start_wait_seconds"
        for s in f.samples
        if s.labels.get("pool") == f"{namespace}/cold" and not s.name.endswith("_bucket")
    }
    assert samples["tollgate_pool_cold_start_wait_seconds_count"] == 1
    assert 0 < samples["tollgate_pool_cold_start_wait_seconds_sum"] <= waited


def test_a_request_held_past_the_cold_start_deadline_gets_503_with_retry_after(
    operator: OperatorProcess,
    kube: Kube,
    apps: client.AppsV1Api,
    namespace: str,
    op_gateway: GatewayProcess,
    db: psycopg.Connection[Any],
) -> None:
    alias = f"never-{namespace}"
    # A model no registry has: the replica starts, its pull fails, it never takes traffic.
    kube.create(autoscaled(namespace, "stuck", maxReplicas=1, coldStartSeconds=2))
    kube.create(model_alias(namespace, "stuck", alias, "no-such-model:1b", "stuck"))
    wait_for("the pool at zero", lambda: at_zero(kube, apps, namespace, "stuck"))
    wait_for("a servable row", lambda: (row(db, alias) or {}).get("enabled"))
    key = new_key(kube, namespace, "user", [alias])
    oai = openai.OpenAI(base_url=op_gateway.url + "/v1", api_key=key, max_retries=0, timeout=60)
    wait_for("the gateway to know the alias", lambda: serves(oai, alias))
    with pytest.raises(openai.APIStatusError) as refused:
        oai.chat.completions.create(model=alias, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 503
    assert refused.value.response.json()["error"]["code"] == "pool_busy"
    assert int(refused.value.response.headers["retry-after"]) >= 1
    # It was not for want of trying: the request woke the pool.
    wait_for("the scale-up", lambda: status(kube, namespace, "stuck").get("desiredReplicas") == 1)
    assert listed(db, alias) == []
