"""Error translation for kopf, log quieting, and leader election against an in-memory Lease."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import kopf
import pytest

from tollgate_operator.__main__ import QuietSuccesses
from tollgate_operator.handlers.common import PASSES, backoff, reconciling, resync
from tollgate_operator.handlers.lifecycle import shut_down
from tollgate_operator.k8s import Conflict
from tollgate_operator.leader import LeaderElector
from tollgate_operator.services.errors import InvalidSpec, Unavailable, Waiting


async def test_errors_become_kopf_errors_with_backoff() -> None:
    with pytest.raises(kopf.TemporaryError) as temporary:
        async with reconciling("ApiKey", "change", retry=2):
            raise Unavailable("postgres", "OperationalError", delay=5)
    assert temporary.value.delay == 20
    assert "postgres is unavailable" in str(temporary.value)

    with pytest.raises(kopf.TemporaryError):
        async with reconciling("ApiKey", "change"):
            raise Waiting("SecretNotFound", "Secret x does not exist")

    with pytest.raises(kopf.PermanentError) as permanent:
        async with reconciling("ModelAlias", "change"):
            raise InvalidSpec("PoolNotFound", "OllamaPool p does not exist")
    assert str(permanent.value) == "PoolNotFound: OllamaPool p does not exist"


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff(1, r) for r in range(4)] == [1, 2, 4, 8]
    assert backoff(10, 50) == 300


@pytest.mark.parametrize(
    ("message", "level", "kept"),
    [
        ("Timer 'apikey_resync' succeeded.", logging.INFO, False),
        ("Handler 'pool_pod_event' succeeded.", logging.INFO, False),
        ("Handler 'apikey_changed' succeeded.", logging.INFO, True),
        ("Timer 'apikey_resync' failed temporarily: x", logging.ERROR, True),
    ],
)
def test_routine_successes_are_not_logged(message: str, level: int, kept: bool) -> None:
    record = logging.LogRecord("kopf.objects", level, __file__, 1, message, None, None)
    assert QuietSuccesses().filter(record) is kept


class FakeLeases:
    """Just enough of the Kube adapter for Leases: optimistic concurrency included."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0

    async def get(self, *_: Any) -> dict[str, Any] | None:
        return copy.deepcopy(self.lease)

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        if self.lease is not None:
            raise Conflict("exists")
        return self._store(manifest)

    async def replace(self, manifest: dict[str, Any]) -> dict[str, Any]:
        assert self.lease is not None
        if manifest["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise Conflict("stale")
        return self._store(manifest)

    def _store(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.lease = copy.deepcopy(manifest)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)

    @property
    def holder(self) -> str | None:
        return None if self.lease is None else self.lease["spec"]["holderIdentity"]


def elector(leases: FakeLeases, identity: str, duration: float = 1.0) -> LeaderElector:
    return LeaderElector(leases, "ns", "lease", identity, duration)  # type: ignore[arg-type]


async def test_one_leader_and_a_takeover_when_it_stops_renewing() -> None:
    leases = FakeLeases()
    a, b = elector(leases, "a"), elector(leases, "b")
    assert await a.try_acquire()
    assert not await b.try_acquire()
    assert leases.holder == "a"
    # a renews: b keeps waiting.
    assert await a.try_acquire()
    assert not await b.try_acquire()
    # a stops renewing: once the record has not changed for the duration (whole seconds in
    # a Lease), b takes over.
    await asyncio.sleep(1.05)
    assert await b.try_acquire()
    assert leases.holder == "b"
    assert leases.lease is not None
    assert leases.lease["spec"]["leaseTransitions"] == 1
    # The old leader finds out at its next renewal and stops.
    lost = asyncio.Event()
    await asyncio.wait_for(a.hold(lost.set), timeout=2)
    assert lost.is_set() and a.lost


async def test_a_restarted_leader_takes_its_lease_back_and_release_hands_it_over() -> None:
    leases = FakeLeases()
    first = elector(leases, "pod-0", duration=30)
    assert await first.try_acquire()
    again = elector(leases, "pod-0", duration=30)  # same Pod name after a crash
    assert await again.try_acquire()
    other = elector(leases, "pod-1", duration=30)
    assert not await other.try_acquire()
    await again.release()
    assert leases.holder == ""
    assert await other.try_acquire()


async def test_acquire_waits_until_stopped() -> None:
    leases = FakeLeases()
    assert await elector(leases, "a", duration=30).try_acquire()
    stop = asyncio.Event()
    waiting = asyncio.create_task(elector(leases, "b", duration=3).acquire(stop))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    stop.set()
    assert await asyncio.wait_for(waiting, timeout=5) is False


class ClosingContext:
    """What the cleanup closes: records which passes were still running when it closed."""

    def __init__(self) -> None:
        self.running_at_close: int | None = None

    async def close(self) -> None:
        self.running_at_close = len(PASSES)


async def test_cleanup_ends_a_pass_in_flight_before_it_closes_the_clients(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """kopf leaves a timer that is mid-pass running when the operator exits; the pass then failed
    on a closed session ("unexpected error in a resync"). The cleanup now ends it first."""
    never = asyncio.Event()
    started = asyncio.Event()
    finished: list[str] = []

    async def stuck() -> None:
        started.set()
        await never.wait()

    async def quick() -> None:
        await asyncio.sleep(0.05)
        finished.append("quick")

    async def change() -> None:
        async with reconciling("ApiKey", "change"):
            await never.wait()

    passes = [
        asyncio.create_task(resync("ApiKey", stuck, 60.0)),
        asyncio.create_task(resync("ApiKey", quick, 60.0)),
        asyncio.create_task(change()),
    ]
    await started.wait()
    assert len(PASSES) == 3
    ctx = ClosingContext()
    memo = kopf.Memo()
    memo.ctx = ctx
    with caplog.at_level(logging.INFO):
        await shut_down(memo)
    assert ctx.running_at_close == 0
    assert finished == ["quick"]  # a pass that ends within the grace is let finish
    assert all(task.done() for task in passes)
    assert passes[0].cancelled() and passes[2].cancelled()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
