"""The routing policy's pure core: every decision replayed without a network or a clock."""

from __future__ import annotations

import collections

import pytest

from tollgate_gateway.routing import (
    Decision,
    Ejector,
    HashRing,
    Policy,
    Reason,
    Replica,
    RetryBudget,
    RoutingConfig,
    chat_prefix,
    choose,
    chwbl_pick,
    eligible,
    generate_prefix,
    prefix_hash,
    retryable,
)
from tollgate_gateway.routing.model import normalize_model, routing_config

NOW = 1_000.0
MODEL_AWARE = RoutingConfig()


def replica(
    name: str,
    *,
    loaded: tuple[str, ...] = (),
    pulled: tuple[str, ...] = ("a", "b"),
    in_flight: int = 0,
    **kw: object,
) -> Replica:
    return Replica(
        name=name,
        url=f"http://{name}:11434",
        pulled=frozenset(pulled),
        loaded=dict.fromkeys(loaded, NOW + 300),
        in_flight=in_flight,
        **kw,  # type: ignore[arg-type]
    )


def pick(replicas: list[Replica], model: str = "a", **kw: object) -> Decision:
    kw.setdefault("config", MODEL_AWARE)
    kw.setdefault("now", NOW)
    decision = choose(replicas, model, **kw)  # type: ignore[arg-type]
    assert decision is not None
    return decision


def test_prefers_the_replica_with_the_model_loaded() -> None:
    pool = [replica("r0", loaded=("b",)), replica("r1", loaded=("a",), in_flight=5), replica("r2")]
    decision = pick(pool)
    assert decision.replica.name == "r1"
    assert decision.reason is Reason.LOADED


def test_least_in_flight_among_loaded_replicas() -> None:
    pool = [replica("r0", loaded=("a",), in_flight=3), replica("r1", loaded=("a",), in_flight=1)]
    assert pick(pool).replica.name == "r1"


def test_expired_load_counts_as_not_loaded() -> None:
    stale = Replica("r0", "u", frozenset({"a"}), loaded={"a": NOW - 1})
    fresh = replica("r1", loaded=("b",))
    decision = pick([stale, fresh])
    assert decision.reason is Reason.COLD


def test_cold_goes_to_the_replica_with_most_room() -> None:
    pool = [
        replica("r0", loaded=("b", "c")),
        replica("r1", loaded=("b",), in_flight=4),
        replica("r2", loaded=("b", "c", "d")),
    ]
    decision = pick(pool)
    assert (decision.replica.name, decision.reason) == ("r1", Reason.COLD)


def test_no_traffic_to_unready_draining_unpulled_or_excluded() -> None:
    pool = [
        replica("unready", loaded=("a",), ready=False),
        replica("draining", loaded=("a",), draining=True),
        replica("pulling", pulled=("b",)),
        replica("ejected", loaded=("a",)),
        replica("ok"),
    ]
    assert [r.name for r in eligible(pool, "a", exclude={"ejected"})] == ["ok"]
    assert pick(pool, exclude={"ejected"}).replica.name == "ok"
    assert choose(pool[:4], "a", config=MODEL_AWARE, now=NOW, exclude={"ejected"}) is None


def test_same_prefix_same_replica_and_prefixes_spread() -> None:
    pool = [replica(f"r{i}", loaded=("a",)) for i in range(4)]
    conv = chat_prefix(
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Plan a trip to Lisbon"},
        ],
        256,
    )
    first = pick(pool, prefix=conv)
    assert first.reason is Reason.PREFIX
    assert all(pick(pool, prefix=conv).replica.name == first.replica.name for _ in range(20))
    spread = collections.Counter(
        pick(pool, prefix=f"conversation {i}".encode()).replica.name for i in range(400)
    )
    assert set(spread) == {"r0", "r1", "r2", "r3"}
    assert min(spread.values()) > 40  # 100 expected each; a ring of 100 vnodes stays near


def test_second_turn_has_the_first_turns_prefix() -> None:
    turn1 = [{"role": "system", "content": "S"}, {"role": "user", "content": "hello"}]
    turn2 = [*turn1, {"role": "assistant", "content": "hi!"}, {"role": "user", "content": "more"}]
    assert chat_prefix(turn1, 256) == chat_prefix(turn2, 256)
    assert chat_prefix(turn1, 256) != chat_prefix([{"role": "user", "content": "hello"}], 256)


def test_prefix_text_from_content_parts_and_anthropic_system() -> None:
    parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "ab"},
                {"type": "image_url", "image_url": {}},
                {"type": "text", "text": "cd"},
            ],
        }
    ]
    assert chat_prefix(parts, 256) == b"abcd"
    assert chat_prefix(parts, 256, system="sys") == b"sys\x1eabcd"
    assert chat_prefix(parts, 3) == b"abc"
    assert chat_prefix(parts, 0) is None
    assert chat_prefix([{"role": "assistant", "content": "x"}], 256) is None
    assert generate_prefix("why is the sky blue", 6) == b"why is"
    assert generate_prefix("", 6) is None


def test_busy_prefix_replica_spills_to_the_next_on_the_ring() -> None:
    prefix = b"shared system prompt"
    idle = [replica(f"r{i}", loaded=("a",)) for i in range(3)]
    home = pick(idle, prefix=prefix).replica.name
    busy = [replica(r.name, loaded=("a",), in_flight=(10 if r.name == home else 0)) for r in idle]
    spilled = pick(busy, prefix=prefix)
    assert spilled.replica.name != home
    assert spilled.reason is Reason.PREFIX


def test_chwbl_bound_holds_for_any_key() -> None:
    loads = {"r0": 4, "r1": 0, "r2": 2}
    for key in range(0, 2**64, 2**58):
        name = chwbl_pick(key, loads, 1.25, 50)
        bound = -(-(sum(loads.values()) + 1) * 1.25 // len(loads))
        assert loads[name] + 1 <= bound


def test_chwbl_is_stable_when_an_unrelated_replica_leaves() -> None:
    four = dict.fromkeys((f"r{i}" for i in range(4)), 0)
    moved = 0
    for i in range(300):
        key = prefix_hash(f"k{i}".encode())
        before = chwbl_pick(key, four, 1.25, 100)
        if before == "r3":
            continue
        after = chwbl_pick(key, dict.fromkeys(("r0", "r1", "r2"), 0), 1.25, 100)
        moved += before != after
    assert moved == 0  # consistent hashing: only r3's keys move


def test_ring_walk_visits_each_replica_once() -> None:
    ring = HashRing(["a", "b", "c"], 10)
    assert sorted(ring.walk(12345)) == ["a", "b", "c"]
    assert list(HashRing([], 10).walk(1)) == []
    with pytest.raises(ValueError, match="no replicas"):
        chwbl_pick(1, {}, 1.25, 10)


def test_least_load_policy_uses_load_per_slot() -> None:
    config = RoutingConfig(policy=Policy.LEAST_LOAD)
    pool = [replica("r0", in_flight=3, slots=4), replica("r1", in_flight=2, slots=1)]
    decision = pick(pool, config=config)
    assert (decision.replica.name, decision.reason) == ("r0", Reason.LEAST_LOAD)


def test_round_robin_cycles_in_name_order() -> None:
    config = RoutingConfig(policy=Policy.ROUND_ROBIN)
    pool = [replica("r1"), replica("r0", loaded=("a",)), replica("r2")]
    names = [pick(pool, config=config, counter=i).replica.name for i in range(6)]
    assert names == ["r0", "r1", "r2", "r0", "r1", "r2"]


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="load_factor"):
        RoutingConfig(load_factor=0.5)
    with pytest.raises(ValueError, match="prefix_chars"):
        RoutingConfig(prefix_chars=-1)
    assert Policy("roundRobin") is Policy.ROUND_ROBIN


def test_ejector_backoff_probe_and_recovery() -> None:
    ej = Ejector(threshold=2, base=1.0, cap=4.0)
    assert ej.available("r0", 0)
    assert not ej.failure("r0", 0)
    assert ej.failure("r0", 0)  # second consecutive failure ejects
    assert not ej.available("r0", 0.5)
    assert ej.ejected(0.5) == {"r0"}
    assert ej.available("r0", 1.0)  # backoff over: this caller is the probe
    assert not ej.available("r0", 1.0)  # only one probe at a time
    assert ej.failure("r0", 1.0)  # probe failed: ejected again, twice as long
    assert not ej.available("r0", 2.5)
    assert ej.available("r0", 3.0)
    ej.success("r0")
    assert ej.available("r0", 3.0) and ej.ejected(3.0) == set()
    for _ in range(10):
        ej.failure("r1", 0)
    assert ej.ejected(0) == {"r1"}
    ej.forget({"r0"})
    assert ej.ejected(0) == set()


def test_ejector_backoff_is_capped() -> None:
    ej = Ejector(threshold=1, base=1.0, cap=4.0)
    t = 0.0
    for expected in (1.0, 2.0, 4.0, 4.0):
        assert ej.failure("r", t)
        assert not ej.available("r", t + expected - 0.01)
        t += expected
        assert ej.available("r", t)
    with pytest.raises(ValueError, match="threshold"):
        Ejector(threshold=0)


def test_retry_only_before_bytes_and_within_budget() -> None:
    assert retryable("connect", 0)
    assert retryable("busy_503", 0)
    assert not retryable("connect", 1)
    assert not retryable("bad_request", 0)
    budget = RetryBudget(attempts=3, deadline=10.0)
    assert budget.next(0) and budget.next(5) and budget.next(9)
    assert not budget.next(9)
    late = RetryBudget(attempts=3, deadline=10.0)
    assert late.next(11)  # the first attempt always goes
    assert not late.next(11)


def test_a_refused_connection_ejects_at_once() -> None:
    ejector = Ejector(threshold=3, base=1.0, cap=8.0)
    assert not ejector.failure("r0", NOW)  # one reset: counts
    assert ejector.failure("r0", NOW, hard=True)  # refused: nothing listens, out now
    assert ejector.ejected(NOW) == {"r0"}
    assert not ejector.failure("r0", NOW, hard=True)  # already out: not ejected twice
    assert not ejector.due("r0", NOW + 0.5)
    assert ejector.due("r0", NOW + 1.0)  # backoff over: a probe may restore it
    ejector.success("r0")
    assert not ejector.ejected(NOW + 1.0) and not ejector.due("r0", NOW + 1.0)


def test_routing_settings_as_the_catalog_stores_them() -> None:
    assert routing_config(None) == RoutingConfig()
    config = routing_config({"pool": "ml/p", "policy": "roundRobin", "prefix_chars": 0})
    assert (config.policy, config.prefix_chars) == (Policy.ROUND_ROBIN, 0)
    # unknown or broken values take the defaults rather than failing every request
    odd = routing_config({"policy": "fastest", "prefix_chars": -3})
    assert (odd.policy, odd.prefix_chars) == (Policy.MODEL_AWARE, 256)
    assert normalize_model("tiny") == "tiny:latest"
    assert normalize_model("127.0.0.1:5000/library/tiny") == "127.0.0.1:5000/library/tiny:latest"
    assert normalize_model("llama3:8b") == "llama3:8b"


def test_request_prefix_of_every_api_shape() -> None:
    from tollgate_gateway.chat.service import request_prefix

    chat = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]}
    assert request_prefix(chat, 256) == chat_prefix(chat["messages"], 256)
    later = {"messages": [*chat["messages"], {"role": "assistant", "content": "A"}]}
    assert request_prefix(later, 256) == request_prefix(chat, 256)
    anthropic = {"system": "S", "messages": [{"role": "user", "content": "U"}]}
    assert request_prefix(anthropic, 256) == request_prefix(chat, 256)
    responses = {"instructions": "S", "input": [{"role": "user", "content": "U"}]}
    assert request_prefix(responses, 256) == request_prefix(chat, 256)
    assert request_prefix({"prompt": "P", "system": "S"}, 256) == generate_prefix("P", 256, "S")
    assert request_prefix({"input": "embed me"}, 256) is None
