"""The sweep of orphaned managed rows.

A key or alias row the operator manages names its resource (``managed_by`` is
``operator:<namespace>/<name>``). When that resource no longer exists and the operator was
not there to see it go (etcd wiped or restored, the CRD deleted with its objects, a
resource deleted while the operator was down and its finalizer removed by hand), the row
would stay live for ever: its key would keep working and the admin API refuses to touch a
managed row. The sweep, at start and every `orphan_sweep_seconds`, looks up the resource of
every live managed row in the namespaces this operator watches; a row whose resource has
been missing for `orphan_grace_seconds` (counted from the first sweep of this operator
process that saw it missing) is released: a key is revoked, an alias disabled. The row
stays managed (re-creating the resource adopts it again); an admin may take it over with
``POST /admin/keys/{id}/release`` or ``/admin/models/{id}/release``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from typing import Any, Protocol

from tollgate_operator import metrics
from tollgate_operator.db import PREFIX, ManagedRow
from tollgate_operator.resources import APIKEYS, MODELALIASES

logger = logging.getLogger(__name__)

PLURALS = {"key": APIKEYS, "model": MODELALIASES}


class RowStore(Protocol):
    async def live_managed_rows(self) -> list[ManagedRow]: ...

    async def release_orphan(self, row: ManagedRow) -> bool: ...


class ResourceLookup(Protocol):
    async def get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None: ...


class OrphanSweeper:
    def __init__(
        self,
        db: RowStore,
        kube: ResourceLookup,
        grace_seconds: float,
        namespaces: Collection[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._kube = kube
        self._grace = grace_seconds
        self._namespaces = set(namespaces)  # empty: every namespace
        self._clock = clock
        self._missing_since: dict[tuple[str, Any], float] = {}

    async def sweep(self) -> list[ManagedRow]:
        """One pass; returns the rows released."""
        now = self._clock()
        rows = await self._db.live_managed_rows()
        exists: dict[tuple[str, str, str], bool] = {}
        released: list[ManagedRow] = []
        waiting = {"key": 0, "model": 0}
        seen: set[tuple[str, Any]] = set()
        for row in rows:
            ref = row.resource
            if ref is None or (self._namespaces and ref[0] not in self._namespaces):
                continue  # another operator's (namespaced installations) or not ours
            lookup = (PLURALS[row.kind], *ref)
            if lookup not in exists:
                exists[lookup] = await self._kube.get_custom(*lookup) is not None
            if exists[lookup]:
                continue
            ident = (row.kind, row.id)
            seen.add(ident)
            since = self._missing_since.setdefault(ident, now)
            if now - since < self._grace:
                waiting[row.kind] += 1
                continue
            if await self._db.release_orphan(row):
                action = "revoked" if row.kind == "key" else "disabled"
                logger.warning(
                    "orphaned %s %r %s: its %s %s has not existed for %.0f s (grace %.0f s)",
                    "key" if row.kind == "key" else "alias",
                    row.name,
                    action,
                    "ApiKey" if row.kind == "key" else "ModelAlias",
                    row.managed_by.removeprefix(PREFIX),
                    now - since,
                    self._grace,
                )
                metrics.ORPHANS_RELEASED.labels(row.kind).inc()
                released.append(row)
            seen.discard(ident)
        # Forget rows that came back (resource re-created) or were released.
        self._missing_since = {k: v for k, v in self._missing_since.items() if k in seen}
        for kind, count in waiting.items():
            metrics.ORPHANS_WAITING.labels(kind).set(count)
        return released
