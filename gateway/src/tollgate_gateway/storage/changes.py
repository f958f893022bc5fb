"""Postgres change feed: LISTEN on `tollgate_changes` and tell the caches what changed.

The triggers (see the initial migration) announce every change to `api_keys` and
`models`, whoever makes it. The caches (keys, aliases) give the feed their callbacks
(`Listener`); it knows nothing of them. While the connection is down, cached entries are
checked again after `FEED_DOWN_TTL`; on reconnect everything cached is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

CHANNEL = "tollgate_changes"
FEED_DOWN_TTL = 1.0
"""Seconds a cached entry is trusted while the feed is down (it may have missed a change)."""
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listener:
    """What a cache gives the feed: how to drop one key, the aliases, everything."""

    key: Callable[[str], None]  # one key's hash changed
    models: Callable[[], None]  # some alias changed
    everything: Callable[[], None]  # anything may have changed (reconnected, unknown note)
    healthy: Callable[[bool], None]  # the feed is (not) listening


class ChangeFeed:
    def __init__(self, dsn: str, listener: Listener) -> None:
        self._dsn = dsn
        self._on = listener
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
        self._on.healthy(healthy)
        if healthy:
            self.connected.set()
        else:
            self.connected.clear()

    def dispatch(self, payload: str) -> None:
        if payload.startswith("key:"):
            self._on.key(payload[4:])
        elif payload == "models":
            self._on.models()
        else:
            self._on.everything()

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
                    self._on.everything()
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
