"""Leader election with a coordination.k8s.io/v1 Lease, as client-go does it.

Two operator replicas are safe: only the holder of the Lease runs kopf's handlers; the
other waits. A holder that stops renewing (crashed, partitioned) loses the Lease once
its record has not changed for ``leaseDurationSeconds`` by the waiting replica's own clock
(no trust in clock agreement). A holder that cannot renew within two thirds of the
duration stops working at once, so two replicas never act together. A replica restarted
with the same identity (Pod name) takes its Lease back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from tollgate_operator import metrics
from tollgate_operator.errors import Unavailable
from tollgate_operator.k8s import Conflict, Kube

logger = logging.getLogger(__name__)


def micro_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self, kube: Kube, namespace: str, name: str, identity: str, duration: float
    ) -> None:
        self._kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self.renew_every = max(0.5, duration / 3)
        self.renew_deadline = duration * 2 / 3
        self._observed: tuple[Any, Any] | None = None
        self._observed_at = 0.0
        self.lost = False

    def _manifest(self, spec: dict[str, Any], resource_version: str | None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version:
            meta["resourceVersion"] = resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": spec,
        }

    async def try_acquire(self) -> bool:
        """Take or renew the Lease; False while another live holder has it."""
        now = datetime.now(UTC)
        lease = await self._kube.get("coordination.k8s.io/v1", "Lease", self.namespace, self.name)
        mine = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": math.ceil(self.duration),
            "acquireTime": micro_time(now),
            "renewTime": micro_time(now),
            "leaseTransitions": 0,
        }
        try:
            if lease is None:
                await self._kube.create(self._manifest(mine, None))
                return True
            spec = dict(lease.get("spec") or {})
            holder = spec.get("holderIdentity") or ""
            record = (holder, spec.get("renewTime"))
            if record != self._observed:
                self._observed, self._observed_at = record, time.monotonic()
            duration = float(spec.get("leaseDurationSeconds") or self.duration)
            if holder and holder != self.identity:
                if time.monotonic() - self._observed_at < duration:
                    return False
                logger.info("leader %s stopped renewing the Lease; taking over", holder)
            if holder == self.identity:
                mine["acquireTime"] = spec.get("acquireTime") or mine["acquireTime"]
                mine["leaseTransitions"] = int(spec.get("leaseTransitions") or 0)
            else:
                mine["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            await self._kube.replace(
                self._manifest(mine, (lease.get("metadata") or {}).get("resourceVersion"))
            )
            return True
        except Conflict:
            return False

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until we lead (True) or `stop` is set (False)."""
        announced = False
        while not stop.is_set():
            try:
                if await self.try_acquire():
                    metrics.LEADER.set(1)
                    logger.info(
                        "leading as %s (Lease %s/%s)", self.identity, self.namespace, self.name
                    )
                    return True
            except (Unavailable, ApiException) as exc:
                logger.warning("leader election: %s", exc)
            if not announced:
                logger.info(
                    "standing by: another replica holds Lease %s/%s", self.namespace, self.name
                )
                announced = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.renew_every)
        return False

    async def hold(self, on_lost: Callable[[], None]) -> None:
        """Renew until cancelled; call `on_lost` (once) when leadership cannot be kept."""
        last_renewal = time.monotonic()
        while True:
            await asyncio.sleep(self.renew_every)
            try:
                if await self.try_acquire():
                    last_renewal = time.monotonic()
                    continue
                reason = "another replica took the Lease"
            except (Unavailable, ApiException) as exc:
                if time.monotonic() - last_renewal < self.renew_deadline:
                    logger.warning("could not renew the Lease (will retry): %s", exc)
                    continue
                reason = f"could not renew the Lease in time: {exc}"
            self.lost = True
            metrics.LEADER.set(0)
            logger.error("lost leadership (%s); stopping", reason)
            on_lost()
            return

    async def release(self) -> None:
        """On a clean exit: hand the Lease over at once instead of after it expires."""
        metrics.LEADER.set(0)
        if self.lost:
            return
        try:
            lease = await self._kube.get(
                "coordination.k8s.io/v1", "Lease", self.namespace, self.name
            )
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            spec = dict(lease["spec"])
            spec.update(
                holderIdentity="", leaseDurationSeconds=1, renewTime=micro_time(datetime.now(UTC))
            )
            await self._kube.replace(
                self._manifest(spec, (lease.get("metadata") or {}).get("resourceVersion"))
            )
        except (Unavailable, Conflict, ApiException) as exc:
            logger.warning("could not release the Lease: %s", exc)
