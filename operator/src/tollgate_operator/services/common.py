"""What every service shares: per-object locks, wake-ups, status writes, Events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from tollgate_operator.k8s import Kube
from tollgate_operator.resources import Condition, ObjectRef, Resource
from tollgate_operator.services.errors import InvalidSpec

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
Key = tuple[str, str, str]

# (body, type, reason, message): posts a Kubernetes Event about the object.
EventSink = Callable[[Mapping[str, Any], str, str, str], None]


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_spec(model: type[M], ref: ObjectRef) -> M:
    """The spec as a typed model; InvalidSpec (never a retry) when it does not fit."""
    try:
        return model.model_validate(ref.spec())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidSpec("InvalidSpec", f"spec.{where}: {first.get('msg')}") from exc


def parse_status(model: type[M], raw: Mapping[str, Any]) -> M:
    """The status as a typed model; fields this version does not know are dropped."""
    try:
        return model.model_validate(dict(raw))
    except ValidationError:
        known = {f.alias or name for name, f in model.model_fields.items()}
        try:
            return model.model_validate({k: v for k, v in raw.items() if k in known})
        except ValidationError:
            return model()


class Locks:
    """One lock per object: handlers, timers and daemons of one object never interleave."""

    def __init__(self) -> None:
        self._locks: defaultdict[Key, asyncio.Lock] = defaultdict(asyncio.Lock)

    @contextlib.asynccontextmanager
    async def hold(self, key: Key) -> AsyncIterator[None]:
        async with self._locks[key]:
            yield

    def forget(self, key: Key) -> None:
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]


class Wakers:
    """Events that wake a daemon early (a Pod of its pool changed, its spec changed)."""

    def __init__(self) -> None:
        self._events: defaultdict[Key, set[asyncio.Event]] = defaultdict(set)

    def register(self, event: asyncio.Event, *keys: Key) -> None:
        for key in keys:
            self._events[key].add(event)

    def unregister(self, event: asyncio.Event, *keys: Key) -> None:
        for key in keys:
            self._events[key].discard(event)
            if not self._events[key]:
                del self._events[key]

    def wake(self, key: Key) -> None:
        for event in self._events.get(key, ()):
            event.set()


def pool_key(namespace: str, pool: str) -> Key:
    return ("pool-members", namespace, pool)


class StatusWriter:
    """Patches .status only when it changed; remembers what it wrote last.

    A daemon's body is refreshed by the watch a moment after our own patch, so comparing
    against the body alone would write twice; comparing against the last write avoids it.
    """

    def __init__(self, kube: Kube) -> None:
        self._kube = kube
        self._written: dict[Key, dict[str, Any]] = {}

    def current(self, ref: ObjectRef) -> dict[str, Any]:
        return dict(self._written.get(ref.key, ref.status()))

    async def write(self, ref: ObjectRef, status: Resource) -> bool:
        return await self.merge(ref, status.to_wire(), replace=True)

    async def merge(self, ref: ObjectRef, fields: dict[str, Any], replace: bool = False) -> bool:
        current = self.current(ref)
        desired = dict(fields) if replace else {**current, **fields}
        if desired == current:
            return False
        patch: dict[str, Any] = {k: v for k, v in desired.items() if current.get(k) != v}
        patch.update({k: None for k in current if k not in desired})
        await self._kube.patch_status(ref.plural, ref.namespace, ref.name, patch)
        self._written[ref.key] = desired
        return True

    def forget(self, key: Key) -> None:
        self._written.pop(key, None)


def ready_changed(old: list[Condition], new: list[Condition], type_: str = "Ready") -> bool:
    before = next((c for c in old if c.type == type_), None)
    after = next((c for c in new if c.type == type_), None)
    if after is None:
        return False
    return before is None or (before.status, before.reason) != (after.status, after.reason)
