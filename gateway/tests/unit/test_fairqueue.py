"""The pool queue's scheduling, replayed step by step (and once through asyncio)."""

from __future__ import annotations

import asyncio

import pytest

from tollgate_gateway.fairqueue import (
    PRIORITY_WEIGHTS,
    AsyncFairQueue,
    FairQueue,
    QueueFull,
    Ticket,
    WaitTimeout,
    parse_priority,
    weight_for,
)
from tollgate_gateway.fairqueue.config import QueueConfig, queue_config


def drain(queue: FairQueue, first: list[Ticket]) -> list[str]:
    """Finish granted requests one by one (oldest first); the order flows were served in."""
    order: list[str] = []
    running = list(first)
    while running:
        ticket = running.pop(0)
        order.append(ticket.flow)
        running.extend(queue.release(ticket))
    return order


def test_idle_pool_grants_at_once_up_to_capacity() -> None:
    queue = FairQueue(capacity=2, max_waiting=10)
    a, b = queue.submit("a"), queue.submit("a")
    c = queue.submit("a")
    assert (a.granted, b.granted, c.granted) == (True, True, False)
    assert (queue.in_flight, queue.waiting) == (2, 1)
    assert queue.release(a) == [c]


def test_single_request_waits_behind_at_most_one_turn_of_a_flood() -> None:
    queue = FairQueue(capacity=4, max_waiting=1000)
    flood = [queue.submit("A") for _ in range(104)]
    running = [t for t in flood if t.granted]
    assert len(running) == 4
    for ticket in running[:2]:  # part of A's turn finishes, then B arrives
        running.remove(ticket)
        running.extend(queue.release(ticket))
    b = queue.submit("B")
    assert not b.granted
    served_before_b = 0
    while not b.granted:
        ticket = running.pop(0)
        granted = queue.release(ticket)
        running.extend(granted)
        served_before_b += sum(1 for t in granted if t.flow == "A")
    assert served_before_b <= 1


def test_flows_alternate_by_weight() -> None:
    queue = FairQueue(capacity=1, max_waiting=100)
    head = queue.submit("batch", weight_for("batch"))
    for _ in range(20):
        queue.submit("batch", weight_for("batch"))
    for _ in range(20):
        queue.submit("chat", weight_for("interactive"))
    order = drain(queue, [head])
    # interactive weighs 8x batch: the first 18 after the head hold ~16 chat, 2 batch
    window = order[1:19]
    assert window.count("chat") >= 15
    assert order.count("chat") == 20 and order.count("batch") == 21


def test_equal_weights_alternate_exactly() -> None:
    queue = FairQueue(capacity=1, max_waiting=100)
    head = queue.submit("a")
    for _ in range(5):
        queue.submit("a")
        queue.submit("b")
    order = drain(queue, [head])
    assert order[1:] == ["a", "b"] * 5 or order[1:] == ["b", "a"] * 5


def test_work_conserving_lone_flow_uses_every_slot() -> None:
    queue = FairQueue(capacity=3, max_waiting=100)
    tickets = [queue.submit("batch", 1.0) for _ in range(9)]
    assert sum(t.granted for t in tickets) == 3
    order = drain(queue, [t for t in tickets if t.granted])
    assert len(order) == 9


def test_waiting_room_is_bounded() -> None:
    queue = FairQueue(capacity=1, max_waiting=2)
    queue.submit("a")
    queue.submit("b")
    queue.submit("c")
    with pytest.raises(QueueFull):  # no earlier in the order than the last one waiting
        queue.submit("d")
    with pytest.raises(QueueFull):
        queue.submit("a")
    assert queue.waiting_by_flow() == {"b": 1, "c": 1}
    assert queue.take_displaced() == []


def test_one_flow_cannot_fill_the_room_for_the_others() -> None:
    queue = FairQueue(capacity=1, max_waiting=3)
    running = queue.submit("flood")
    floods = [queue.submit("flood") for _ in range(3)]
    with pytest.raises(QueueFull):  # the flood's own next one is refused
        queue.submit("flood")
    newcomer = queue.submit("newcomer")  # takes the place of the flood's last waiter
    (displaced,) = queue.take_displaced()
    assert displaced is floods[-1] and displaced.displaced and not displaced.granted
    assert queue.waiting == 3
    assert queue.waiting_by_flow() == {"flood": 2, "newcomer": 1}
    assert queue.release(running) == [newcomer]  # and goes first


async def test_a_displaced_waiter_gets_queue_full() -> None:
    queue = AsyncFairQueue(capacity=1, max_waiting=1)
    held = asyncio.Event()
    release = asyncio.Event()

    async def hold(flow: str) -> None:
        async with queue.slot(flow, 4.0, max_wait=5):
            held.set()
            await release.wait()

    running = asyncio.ensure_future(hold("flood"))
    await held.wait()
    flooded = asyncio.ensure_future(hold("flood"))
    await asyncio.sleep(0.01)
    newcomer = asyncio.ensure_future(hold("newcomer"))
    with pytest.raises(QueueFull):
        await asyncio.wait_for(flooded, 1)
    release.set()
    await asyncio.wait_for(asyncio.gather(running, newcomer), 1)


def test_cancelled_waiter_never_takes_a_slot() -> None:
    queue = FairQueue(capacity=1, max_waiting=10)
    head = queue.submit("a")
    gone = queue.submit("b")
    after = queue.submit("c")
    assert queue.cancel(gone) == []
    assert queue.waiting == 1
    assert queue.release(head) == [after]
    assert not gone.granted
    assert queue.cancel(gone) == []  # twice is harmless


def test_cancel_of_granted_ticket_releases_it() -> None:
    queue = FairQueue(capacity=1, max_waiting=10)
    head = queue.submit("a")
    nxt = queue.submit("b")
    assert queue.cancel(head) == [nxt]
    assert queue.cancel(head) == []
    with pytest.raises(ValueError, match="holds no slot"):
        queue.release(head)


def test_resize_grants_waiters_and_zero_capacity_holds_everyone() -> None:
    queue = FairQueue(capacity=0, max_waiting=10)
    waiting = [queue.submit("a"), queue.submit("b")]
    assert not any(t.granted for t in waiting)
    assert queue.resize(2) == waiting


def test_a_returning_flow_gets_no_credit_for_idle_time() -> None:
    queue = FairQueue(capacity=1, max_waiting=100)
    head = queue.submit("a")
    for _ in range(10):
        queue.submit("a")
    running = [head]
    for _ in range(6):
        running.extend(queue.release(running.pop(0)))
    # b was idle all along: it starts at the virtual time, not at zero
    b = queue.submit("b")
    assert b.start == queue.virtual_time
    queue.forget_idle_flows()
    assert "b" in queue._finish


def test_weights_and_validation() -> None:
    assert weight_for(None) == weight_for("standard") == 4.0
    assert weight_for("interactive") > weight_for("batch")
    assert weight_for(2.5) == 2.5
    with pytest.raises(ValueError, match="unknown priority"):
        weight_for("vip")
    with pytest.raises(ValueError, match="> 0"):
        weight_for(0)
    with pytest.raises(ValueError, match="> 0"):
        FairQueue(1, 1).submit("a", weight=0)


async def test_async_queue_deadline_disconnect_and_handover() -> None:
    queue = AsyncFairQueue(capacity=1, max_waiting=10)
    release = asyncio.Event()
    served: list[str] = []

    async def hold(flow: str) -> None:
        async with queue.slot(flow, 4.0, max_wait=5) as waited:
            assert waited >= 0
            served.append(flow)
            await release.wait()

    holder = asyncio.create_task(hold("a"))
    await asyncio.sleep(0)
    with pytest.raises(WaitTimeout):
        async with queue.slot("b", 4.0, max_wait=0.01):
            pytest.fail("granted while the only slot is held")
    leaver = asyncio.create_task(hold("c"))
    await asyncio.sleep(0)
    leaver.cancel()  # the client went away while queued
    with pytest.raises(asyncio.CancelledError):
        await leaver
    assert queue.core.waiting == 0
    follower = asyncio.create_task(hold("d"))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(holder, follower)
    assert served == ["a", "d"]
    assert (queue.core.in_flight, queue.core.waiting) == (0, 0)


def test_priorities_as_stored_parse_to_a_name_or_a_weight() -> None:
    assert parse_priority("batch") == "batch"
    assert parse_priority(" interactive ") == "interactive"
    assert parse_priority("2.5") == 2.5
    assert parse_priority(3) == 3.0
    for bad in ("0", "-1", "urgent", "", "nan", "inf", True, 0, None):
        assert parse_priority(bad) is None, bad
    assert weight_for(parse_priority("batch")) == 1.0
    assert weight_for(parse_priority("2.5")) == 2.5
    assert weight_for(parse_priority("nonsense")) == PRIORITY_WEIGHTS["standard"]


def test_a_pool_queue_is_on_only_with_slots_or_a_cold_start() -> None:
    assert queue_config(None) is None
    assert queue_config({"pool": "ml/p", "policy": "leastLoad"}) is None
    config = queue_config({"slots": 4, "max_wait_seconds": 2.5, "max_queue": 10})
    assert config == QueueConfig(slots=4, max_wait_seconds=2.5, max_queue=10)
    assert config is not None
    assert (config.capacity(3), config.capacity(0)) == (12, 0)
    cold = queue_config({"cold_start_seconds": 120})
    assert cold == QueueConfig(slots=1, cold_start_seconds=120.0)
    odd = queue_config({"slots": 2, "max_wait_seconds": -1, "max_queue": "many", "slots_x": 1})
    assert odd == QueueConfig(slots=2)
    assert queue_config({"slots": 0}) is None
    assert queue_config({"slots": True}) is None
