"""OllamaPool autoscaling: demand from the gateways → a decision → the StatefulSet's replicas.

Each pass (every TOLLGATE_AUTOSCALE_INTERVAL_SECONDS, and at once when a gateway announces a
request waiting for the pool) reads the pool's demand from Redis, keeps it as a sample, and
asks the pure core (``autoscaling.py``) for the replicas the pool should have.

* The decision is written to status (``desiredReplicas``, ``lastScaleTime``,
  ``lastScaleReason``) *before* it is carried out, with one Event. A restarted operator (or
  the replica that takes the Lease over) reads it back: it carries out a decision that was
  not finished and never makes it a second time.
* Growing patches the StatefulSet's scale subresource at once.
* Shrinking first takes the replicas above the decision (the highest ordinals, the ones a
  StatefulSet removes) out of rotation: the aliases' rows stop listing them, so gateways
  send them nothing new (``drainingSince``). They are removed once the gateways report no
  request in flight or queued for the pool, or after ``drainSeconds`` at most.
* A manual scale of the StatefulSet loses: it is set back to the autoscaler's count, with a
  Warning Event and ``tollgate_operator_scale_events_total{direction="restored"}``. To pin a
  size, set ``minReplicas`` = ``maxReplicas`` or remove ``spec.autoscaling``.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from tollgate_operator import metrics
from tollgate_operator.autoscaling import (
    AutoscalingSpec,
    Sample,
    ScaleDecision,
    desired_replicas,
    prune,
)
from tollgate_operator.demand import DemandReader
from tollgate_operator.k8s import Kube
from tollgate_operator.resources import (
    ObjectRef,
    OllamaPoolSpec,
    OllamaPoolStatus,
    format_time,
)
from tollgate_operator.services.common import (
    EventSink,
    Key,
    Locks,
    StatusWriter,
    Wakers,
    parse_spec,
    parse_status,
    pool_key,
    utcnow,
)
from tollgate_operator.settings import Settings

logger = logging.getLogger(__name__)

# After replicas leave rotation, gateways need a moment to read the aliases' new rows
# (change feed) before "no request in flight" means none will arrive there.
SETTLE_SECONDS = 2.0


def autoscaler_key(namespace: str, pool: str) -> Key:
    return ("autoscale", namespace, pool)


def core_spec(spec: OllamaPoolSpec) -> AutoscalingSpec:
    """spec.autoscaling in the pure core's terms."""
    auto = spec.autoscaling
    assert auto is not None
    return AutoscalingSpec(
        min_replicas=auto.min_replicas,
        max_replicas=auto.max_replicas,
        target_load=auto.target_load_percent / 100,
        scale_up_delay=float(auto.scale_up_delay_seconds),
        scale_down_delay=float(auto.scale_down_delay_seconds),
        slots=spec.slots,
    )


def statefulset_replicas(spec: OllamaPoolSpec, status: OllamaPoolStatus) -> int:
    """What the StatefulSet is set to: spec.replicas, or for an autoscaled pool the count
    the autoscaler last set (minReplicas for a new pool)."""
    if spec.autoscaling is None:
        return spec.replicas
    if status.replicas is not None:  # (just turned on: from the replicas the pool has)
        return status.replicas
    return spec.autoscaling.min_replicas


def changed_meanwhile(before: dict[str, Any] | None, applied: dict[str, Any]) -> bool:
    """Whether the StatefulSet's spec was changed by someone else between the read ``before``
    and the apply that returned ``applied``: a forced apply changes the spec at most once
    (one generation), so two or more mean another change came in between, and was undone."""
    if before is None:
        return False
    first = int((before.get("metadata") or {}).get("generation") or 0)
    last = int((applied.get("metadata") or {}).get("generation") or 0)
    return last >= first + 2


def pod_names(pool: str, first: int, end: int) -> str:
    return ", ".join(f"{pool}-{i}" for i in range(first, end))


class Autoscaler:
    def __init__(
        self,
        settings: Settings,
        kube: Kube,
        demand: DemandReader | None,
        locks: Locks,
        wakers: Wakers,
        statuses: StatusWriter,
        events: EventSink,
    ) -> None:
        self._settings = settings
        self._kube = kube
        self._demand = demand
        self._locks = locks
        self._wakers = wakers
        self._statuses = statuses
        self._events = events
        self._samples: dict[Key, list[Sample]] = {}

    def forget(self, ref: ObjectRef) -> None:
        self._samples.pop(ref.key, None)

    def replicas_ignored(self, ref: ObjectRef) -> None:
        """spec.replicas changed (e.g. `kubectl scale ollamapool`) on an autoscaled pool."""
        if (ref.spec() or {}).get("autoscaling") is None:
            return
        self._events(
            ref.body,
            "Warning",
            "ReplicasIgnored",
            "spec.replicas is ignored while spec.autoscaling is set; change "
            "spec.autoscaling.minReplicas / maxReplicas, or remove spec.autoscaling",
        )

    async def restore_manual_scale(
        self, ref: ObjectRef, status: OllamaPoolStatus, sts: dict[str, Any] | None, wanted: int
    ) -> bool:
        """The StatefulSet was scaled by someone else: say so, and whether it was (the caller
        sets it back)."""
        if sts is None:
            return False
        found = int((sts.get("spec") or {}).get("replicas", 1))
        if found == wanted or status.replicas is None:
            return False
        self._reverted(
            ref,
            f"The StatefulSet has {found} replicas, not the autoscaler's {wanted} (scaled by "
            f"hand, or a scale not finished before an operator restart): set back to {wanted}.",
        )
        return True

    def reverted_meanwhile(self, ref: ObjectRef, wanted: int) -> None:
        """A change to the StatefulSet came between the reconcile's read and its apply, which
        set it back (`changed_meanwhile`): say so, as for a scale seen before the apply."""
        self._reverted(
            ref,
            "The StatefulSet was changed while the operator applied it (scaled by hand?): "
            f"set back to {wanted} replicas.",
        )

    def _reverted(self, ref: ObjectRef, what: str) -> None:
        metrics.SCALE_EVENTS.labels(f"{ref.namespace}/{ref.name}", "restored").inc()
        self._events(
            ref.body,
            "Warning",
            "ManualScaleReverted",
            f"{what} To pin the size set spec.autoscaling.minReplicas = maxReplicas, or "
            "remove spec.autoscaling.",
        )

    async def step(self, ref: ObjectRef) -> float:
        """One pass: sample the demand, decide, carry out what was decided (a scale up at
        once; a scale down as a drain: out of rotation first, removed once drained). Returns
        the seconds until the next pass."""
        interval = self._settings.autoscale_interval_seconds
        spec = parse_spec(OllamaPoolSpec, ref)
        if spec.autoscaling is None or ref.deleting:
            self.forget(ref)
            return self._settings.pool_resync_seconds
        if self._demand is None:
            logger.warning(
                "%s/%s has spec.autoscaling but TOLLGATE_REDIS_URL is not set: its replicas "
                "stay as they are",
                ref.namespace,
                ref.name,
            )
            return self._settings.pool_resync_seconds
        pool = f"{ref.namespace}/{ref.name}"
        demand = await self._demand.demand(pool, time.time())
        metrics.POOL_DEMAND.labels(pool).set(demand)
        auto = core_spec(spec)
        now = time.monotonic()
        samples = [*self._samples.get(ref.key, []), Sample(now, float(demand))]
        self._samples[ref.key] = samples = prune(samples, auto, now)
        async with self._locks.hold(ref.key):
            status = parse_status(OllamaPoolStatus, self._statuses.current(ref))
            sts = await self._kube.get("apps/v1", "StatefulSet", ref.namespace, ref.name)
            if sts is None or status.replicas is None:
                return interval  # the pool's reconcile has not created it yet
            set_to = status.replicas  # what the StatefulSet is to have now
            if await self.restore_manual_scale(ref, status, sts, set_to):
                await self._scale(ref, set_to)
            current = status.desired_replicas if status.desired_replicas is not None else set_to
            decision = desired_replicas(auto, samples, current, now)
            if decision.changes(current):
                desired, draining = await self._carry_out(
                    ref, pool, demand, decision, current, set_to, status.draining_since
                )
            else:
                await self._statuses.merge(ref, {"demand": demand})
                desired, draining = current, status.draining_since
            if set_to > desired:
                await self._drain(ref, spec, pool, demand, desired, set_to, draining)
        return interval

    async def _carry_out(
        self,
        ref: ObjectRef,
        pool: str,
        demand: int,
        decision: ScaleDecision,
        current: int,
        set_to: int,
        draining: datetime | None,
    ) -> tuple[int, datetime | None]:
        """A new size: persisted before it is carried out (a restart resumes, never repeats
        it). Up: more replicas at once, and a drain in progress is called off; down: the
        drain starts (the replicas leave rotation first). Returns the size and the drain."""
        desired = decision.replicas
        stamp = utcnow()
        fields: dict[str, Any] = {
            "demand": demand,
            "desiredReplicas": desired,
            "lastScaleTime": format_time(stamp),
            "lastScaleReason": decision.reason,
        }
        if desired > current:
            direction, reason = "up", "ScaleUp"
            message = f"{current} → {desired} replicas: {decision.reason}"
            if desired > set_to:
                fields["replicas"] = desired
            if desired >= set_to:
                fields["drainingSince"] = draining = None
        else:
            direction, reason = "drain", "ScaleDown"
            message = (
                f"{current} → {desired} replicas: {decision.reason}; "
                f"{pod_names(ref.name, desired, set_to)} leave rotation first"
            )
            if draining is None:
                draining = stamp
                fields["drainingSince"] = format_time(stamp)
        await self._statuses.merge(ref, fields)
        metrics.SCALE_EVENTS.labels(pool, direction).inc()
        metrics.POOL_DESIRED_REPLICAS.labels(pool).set(desired)
        self._events(ref.body, "Normal", reason, message)
        logger.info("%s: %s", pool, message)
        if "replicas" in fields:
            await self._scale(ref, desired)
            metrics.POOL_REPLICAS.labels(pool).set(desired)
        self._wakers.wake(pool_key(ref.namespace, ref.name))  # the aliases' rows
        return desired, draining

    async def _drain(
        self,
        ref: ObjectRef,
        spec: OllamaPoolSpec,
        pool: str,
        demand: int,
        desired: int,
        set_to: int,
        draining: datetime | None,
    ) -> None:
        """Replicas above `desired` are out of rotation; remove them once drained (no request
        in flight, or drainSeconds passed)."""
        if draining is None:
            draining = utcnow()
            await self._statuses.merge(ref, {"drainingSince": format_time(draining)})
        if not self._drained(spec, demand, draining, utcnow()):
            return
        await self._statuses.merge(ref, {"replicas": desired, "drainingSince": None})
        await self._scale(ref, desired)
        metrics.SCALE_EVENTS.labels(pool, "down").inc()
        metrics.POOL_REPLICAS.labels(pool).set(desired)
        self._events(
            ref.body,
            "Normal",
            "ReplicasRemoved",
            f"{pod_names(ref.name, desired, set_to)} removed "
            + ("(no request in flight)" if demand == 0 else "(drainSeconds passed)"),
        )

    def _drained(self, spec: OllamaPoolSpec, demand: int, since: datetime, now: datetime) -> bool:
        assert spec.autoscaling is not None
        waited = now - since.astimezone(UTC)
        if waited >= timedelta(seconds=spec.autoscaling.drain_seconds):
            return True
        settle = SETTLE_SECONDS + self._settings.autoscale_interval_seconds
        return demand == 0 and waited >= timedelta(seconds=settle)

    async def _scale(self, ref: ObjectRef, replicas: int) -> None:
        await self._kube.scale("apps/v1", "StatefulSet", ref.namespace, ref.name, replicas)
