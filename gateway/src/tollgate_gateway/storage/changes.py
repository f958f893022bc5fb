"""Postgres change feed: LISTEN on `tollgate_changes` and drop cached keys and aliases.

The triggers (see the initial migration) announce every change to `api_keys` and
`models`, whoever makes it. While the connection is down, cached entries are checked again
after a second; on reconnect everything cached is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

from tollgate_gateway.catalog.service import Catalog
from tollgate_gateway.keys.service import KeyService

CHANNEL = "tollgate_changes"
log = logging.getLogger(__name__)


class ChangeFeed:
    def __init__(self, dsn: str, keys: KeyService, catalog: Catalog) -> None:
        self._dsn = dsn
        self._keys = keys
        self._catalog = catalog
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="change-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _set_healthy(self, healthy: bool) -> None:
        self._keys.feed_healthy = healthy
        self._catalog.feed_healthy = healthy
        if healthy:
            self.connected.set()
        else:
            self.connected.clear()

    def dispatch(self, payload: str) -> None:
        if payload.startswith("key:"):
            self._keys.invalidate(payload[4:])
        elif payload == "models":
            self._catalog.invalidate()
        else:
            self._keys.invalidate_all()
            self._catalog.invalidate()

    async def _run(self) -> None:
        delay = 0.2
        lost_logged = False  # one line per loss, not one per reconnection attempt
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._dsn,
                    autocommit=True,
                    keepalives=1,
                    keepalives_idle=5,
                    keepalives_interval=2,
                    keepalives_count=2,
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    # Anything may have changed while we were not listening.
                    self._keys.invalidate_all()
                    self._catalog.invalidate()
                    self._set_healthy(True)
                    if lost_logged:
                        log.warning("change feed reconnected")
                    lost_logged = False
                    delay = 0.2
                    while True:
                        async for note in conn.notifies(timeout=5.0):
                            self.dispatch(note.payload)
                        await conn.execute("SELECT 1")  # a dead link raises here
            except asyncio.CancelledError:
                self._set_healthy(False)
                raise
            except Exception as exc:  # any connection trouble: fall back and retry
                # The caches stay: while the feed is down their entries are checked again
                # after a second, and kept as they are while Postgres cannot be asked.
                if self.connected.is_set() or not lost_logged:
                    log.warning("change feed lost (%s); reconnecting", str(exc).strip())
                    lost_logged = True
                self._set_healthy(False)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
