"""Key lookup for the hot path: a per-process cache in front of Postgres.

Entries are dropped when Postgres announces a change to the key (LISTEN/NOTIFY,
see `storage.changes`), so revocation reaches every replica within moments. A
lookup that started before an invalidation never writes its stale answer back
(generation check). While the change feed is down, entries are checked against Postgres
again after one second.

While Postgres itself is down (`storage.outage`), a key already in the cache keeps its last
known state for the grace period, whatever its age: a revocation that arrived before the
outage has dropped the entry, so that key is not served. A key that is not in the cache
gets 503 service_unavailable with Retry-After.
"""

from __future__ import annotations

import fnmatch
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollgate_gateway import metrics
from tollgate_gateway.errors import service_unavailable
from tollgate_gateway.fairqueue.core import parse_priority
from tollgate_gateway.storage.changes import FEED_DOWN_TTL
from tollgate_gateway.storage.outage import UNAVAILABLE, DatabaseHealth
from tollgate_schema.keys import hash_key, hashes_equal
from tollgate_schema.orm import ApiKey

NEGATIVE_TTL = 5.0


def compile_allowed(allowed: str) -> re.Pattern[str] | None:
    """None means every model; otherwise a regex of the comma-separated globs."""
    patterns = [p.strip() for p in allowed.split(",") if p.strip()]
    if not patterns or "*" in patterns:
        return None if patterns else re.compile(r"(?!)")
    return re.compile("|".join(fnmatch.translate(p) for p in patterns))


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: uuid.UUID
    key_hash: str
    name: str
    owner: str | None
    app: str | None
    allowed: re.Pattern[str] | None = field(compare=False)
    rate_limit_rpm: int | None
    tpm_limit: int | None
    concurrency_limit: int | None
    monthly_budget: Decimal | None
    expires_at: datetime | None
    disabled: bool
    revoked: bool
    prefix: str = field(default="", compare=False)  # the display prefix, for logs
    # Its share of a full pool: a PRIORITY_WEIGHTS name or a weight (None: standard).
    priority: str | float | None = None
    limited: bool = field(init=False, compare=False, repr=False)
    tracked: bool = field(init=False, compare=False, repr=False)
    id_text: str = field(init=False, compare=False, repr=False)  # str(id), asked per request

    def __post_init__(self) -> None:
        object.__setattr__(self, "id_text", str(self.id))
        # Asked on every request: worked out once per record.
        limits = (self.rate_limit_rpm, self.tpm_limit, self.concurrency_limit, self.monthly_budget)
        object.__setattr__(self, "limited", any(v is not None for v in limits))
        # Held in flight (a lease, with reservations) from admission to settlement.
        held = (self.tpm_limit, self.concurrency_limit, self.monthly_budget)
        object.__setattr__(self, "tracked", any(v is not None for v in held))

    @property
    def has_limits(self) -> bool:
        return self.limited

    def usable(self, now: datetime | None = None) -> bool:
        if self.disabled or self.revoked:
            return False
        if self.expires_at is not None:
            return (now or datetime.now(UTC)) < self.expires_at
        return True

    def may_use(self, alias: str) -> bool:
        return self.allowed is None or self.allowed.fullmatch(alias) is not None

    @classmethod
    def from_row(cls, row: Any) -> KeyRecord:
        return cls(
            id=row.id,
            key_hash=row.key_hash,
            name=row.name,
            owner=row.owner,
            app=row.app,
            allowed=compile_allowed(row.allowed_models),
            rate_limit_rpm=row.rate_limit_rpm,
            tpm_limit=row.tpm_limit,
            concurrency_limit=row.concurrency_limit,
            monthly_budget=row.monthly_budget,
            expires_at=row.expires_at,
            disabled=row.disabled,
            revoked=row.revoked_at is not None,
            prefix=row.key_prefix,
            priority=parse_priority(row.priority),
        )


class KeyService:
    def __init__(
        self,
        engine: AsyncEngine,
        pepper: bytes,
        ttl: float,
        max_entries: int,
        health: DatabaseHealth,
    ) -> None:
        self._engine = engine
        self._pepper = pepper
        self._ttl = ttl
        self._max = max_entries
        # digest -> (record or None for "no such key", expires at, loaded at)
        self._cache: OrderedDict[str, tuple[KeyRecord | None, float, float]] = OrderedDict()
        self._generation = 0
        self.feed_healthy = False
        # Told of every change the feed announces: a key's digest, or None for "any key".
        self.on_change: Callable[[str | None], None] | None = None
        self.health = health

    def hash(self, key: str) -> str:
        return hash_key(key, self._pepper)

    async def authenticate(self, key: str) -> KeyRecord | None:
        """The usable key record for a presented key, or None."""
        digest = self.hash(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > now and (self.feed_healthy or now - hit[2] < FEED_DOWN_TTL):
            record = hit[0]
        else:
            record = await self._load_or_remember(digest, hit)
        if record is None or not hashes_equal(record.key_hash, digest) or not record.usable():
            return None
        return record

    async def _load_or_remember(
        self, digest: str, hit: tuple[KeyRecord | None, float, float] | None
    ) -> KeyRecord | None:
        health = self.health
        if health.may_try():
            try:
                record = await self._load(digest)
            except UNAVAILABLE as exc:
                health.failed(exc)
            else:
                health.ok()
                return record
        if hit is not None and health.within_grace():
            return hit[0]
        raise service_unavailable("Key verification")

    async def _load(self, digest: str) -> KeyRecord | None:
        generation = self._generation
        started = time.perf_counter()
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(ApiKey.__table__).where(ApiKey.key_hash == digest))
            ).first()
        metrics.DB_LATENCY.labels("key_lookup").observe(time.perf_counter() - started)
        record = KeyRecord.from_row(row) if row is not None else None
        if generation == self._generation:
            ttl = self._ttl if self.feed_healthy else FEED_DOWN_TTL
            if record is None:
                ttl = min(ttl, NEGATIVE_TTL)
            loaded = time.monotonic()
            self._cache[digest] = (record, loaded + ttl, loaded)
            self._cache.move_to_end(digest)
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return record

    async def fresh(self, digest: str) -> KeyRecord | None:
        """The key's record as the database has it now (and cached)."""
        return await self._load(digest)

    def invalidate(self, digest: str) -> None:
        self._generation += 1
        self._cache.pop(digest, None)
        if self.on_change is not None:
            self.on_change(digest)

    def invalidate_all(self) -> None:
        self._generation += 1
        self._cache.clear()
        if self.on_change is not None:
            self.on_change(None)
