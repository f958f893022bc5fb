"""Autoscaling's pieces without a cluster: the demand the gateways publish (read from a real
Valkey, in the contract's format), the StatefulSet's replicas, the aliases' routing rows
and which replicas drain."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import pytest
import redis

from tollgate_dev.servers.backing import LocalValkey
from tollgate_operator.builders.pool import PoolDefaults, build_statefulset
from tollgate_operator.demand import DemandReader
from tollgate_operator.resources import OllamaPoolSpec, OllamaPoolStatus
from tollgate_operator.services.aliases import Observation, in_rotation, ordinal, pool_target
from tollgate_operator.services.autoscaler import (
    changed_meanwhile,
    core_spec,
    statefulset_replicas,
)
from tollgate_schema.demand import demand_entry, demand_key, sum_fresh

AUTO = {"minReplicas": 0, "maxReplicas": 3, "coldStartSeconds": 90}


def entry(inflight: int, queued: int, at: float) -> str:
    return json.dumps({"inflight": inflight, "queued": queued, "at": at})


def test_demand_sums_the_fresh_entries_of_every_gateway() -> None:
    now = 1000.0
    entries = {
        b"gw-a": entry(2, 1, now - 1).encode(),
        b"gw-b": entry(0, 4, now - 14),
        "gw-dead": entry(9, 9, now - 16),  # older than 15 s: that gateway stopped writing
        "gw-odd": "not json",
        "gw-partial": json.dumps({"inflight": 1}),  # no "at": not the contract
    }
    assert sum_fresh(entries, now, fresh=15) == 7
    assert sum_fresh({}, now, fresh=15) == 0


def test_the_demand_key_keeps_a_pool_in_one_cluster_slot() -> None:
    assert demand_key("team/small") == "tg:demand:{team/small}"


def test_demand_read_from_valkey_and_the_wake_up_channel(valkey: LocalValkey) -> None:
    pool = f"ns-{time.monotonic_ns()}/small"
    writer = redis.Redis.from_url(valkey.url)
    now = time.time()
    writer.hset(demand_key(pool), mapping={"gw-1": entry(1, 2, now), "gw-2": entry(3, 0, now)})
    writer.expire(demand_key(pool), 60)

    async def scenario() -> tuple[int, int, list[str]]:
        reader = DemandReader(valkey.url, fresh=15)
        woken: list[str] = []
        got = asyncio.Event()

        def wake(name: str) -> None:
            woken.append(name)
            got.set()

        listening = asyncio.create_task(reader.listen(wake))
        try:
            busy = await reader.demand(pool, time.time())
            idle = await reader.demand("nobody/here", time.time())
            # A gateway announces a request waiting for the pool (until the subscription is up).
            while not got.is_set():
                writer.publish("tg:demand", pool)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(got.wait(), 0.2)
        finally:
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)
            await reader.close()
        return busy, idle, woken

    busy, idle, woken = asyncio.run(scenario())
    assert (busy, idle) == (6, 0)
    assert woken[0] == pool
    writer.close()


def pool_spec(**spec: Any) -> OllamaPoolSpec:
    return OllamaPoolSpec.model_validate(spec)


def test_the_core_gets_the_pools_slots_and_target() -> None:
    spec = pool_spec(numParallel=4, autoscaling={**AUTO, "targetLoadPercent": 150})
    core = core_spec(spec)
    assert (core.min_replicas, core.max_replicas, core.slots) == (0, 3, 4)
    assert core.target_load == 1.5
    assert core.scale_down_delay == 300  # the CRD's default
    assert pool_spec(autoscaling=AUTO).slots == 1  # numParallel unset: one request at a time


def test_statefulset_replicas_follow_the_autoscaler_not_spec_replicas() -> None:
    manual = pool_spec(replicas=2)
    auto = pool_spec(replicas=2, autoscaling=AUTO)
    assert statefulset_replicas(manual, OllamaPoolStatus(replicas=5)) == 2
    # A new autoscaled pool starts at minReplicas: no Pod before any demand.
    assert statefulset_replicas(auto, OllamaPoolStatus()) == 0
    # What the autoscaler set (replicas above desired are draining, not yet removed).
    assert statefulset_replicas(auto, OllamaPoolStatus(replicas=3, desired_replicas=1)) == 3
    # Autoscaling just turned on: from the replicas the pool has, never a sudden shrink.
    assert statefulset_replicas(auto, OllamaPoolStatus(replicas=2)) == 2
    defaults = PoolDefaults(image="docker.io/ollama/ollama:0.33.0")
    assert build_statefulset("p", "ns", auto, defaults, 0)["spec"]["replicas"] == 0
    assert build_statefulset("p", "ns", manual, defaults)["spec"]["replicas"] == 2


def test_routing_rows_of_an_autoscaled_pool_carry_the_hold_deadline() -> None:
    plain = pool_spec().routing_row("team/small")
    # every pool's rows carry its slots (numParallel, Ollama's 1 when unset): the pool queue
    assert plain == {"pool": "team/small", "policy": "modelAware", "prefix_chars": 256, "slots": 1}
    auto = pool_spec(autoscaling=AUTO, routing={"policy": "leastLoad"}, numParallel=3)
    assert auto.routing_row("team/small") == {
        "pool": "team/small",
        "policy": "leastLoad",
        "prefix_chars": 256,
        "autoscaling": True,
        "cold_start_seconds": 90,
        "slots": 3,
    }


def pod(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": name}}


def test_replicas_above_the_decision_leave_rotation_first() -> None:
    assert ordinal("small-12", "small") == 12
    assert ordinal("small-x", "small") is None
    assert ordinal("other-1", "small") is None
    spec = pool_spec(autoscaling=AUTO)
    seen = Observation(spec, "", [], {}, [], pool="small", target=1)
    assert [in_rotation(pod(f"small-{i}"), seen) for i in range(3)] == [True, False, False]
    # Without autoscaling the StatefulSet removes Pods itself (terminating leaves the row).
    seen = Observation(pool_spec(replicas=1), "", [], {}, [], pool="small", target=1)
    assert in_rotation(pod("small-2"), seen)


@pytest.mark.parametrize(
    ("status", "target"),
    [({}, 0), ({"replicas": 3}, 3), ({"replicas": 3, "desiredReplicas": 1}, 1)],
)
def test_aliases_size_by_the_decision(status: dict[str, Any], target: int) -> None:
    assert pool_target(pool_spec(autoscaling=AUTO), status) == target
    assert pool_target(pool_spec(replicas=2), status) == 2


def test_what_a_gateway_writes_is_what_the_operator_counts() -> None:
    now = 1000.0
    entries = {b"gw-a": demand_entry(2, 3, now - 1), b"gw-b": demand_entry(1, 0, now - 20)}
    assert sum_fresh(entries, now, fresh=15) == 5


def at_generation(generation: int) -> dict[str, Any]:
    return {"metadata": {"generation": generation}}


def test_a_change_between_the_read_and_the_apply_is_told_by_the_generations() -> None:
    # A forced apply moves the spec at most one generation: more means another change came
    # in between (a scale by hand), which the apply undid.
    assert changed_meanwhile(at_generation(4), at_generation(6))
    assert changed_meanwhile(at_generation(4), at_generation(7))
    assert not changed_meanwhile(at_generation(4), at_generation(5))  # the apply's own change
    assert not changed_meanwhile(at_generation(4), at_generation(4))  # nothing changed
    assert not changed_meanwhile(None, at_generation(1))  # created by the apply
    assert not changed_meanwhile(at_generation(9), at_generation(1))  # deleted and made anew
