"""Usage durable from settlement: a Redis stream that the writers drain to Postgres.

The settlement script appends each request's usage row (a COPY line) to one stream in the
same round trip that frees its lease, so once a response is settled its usage survives a
SIGKILL of the gateway. Every gateway is a consumer of one group: it reads new entries,
writes them with COPY, and acknowledges and deletes them after the commit. Entries a
consumer read but never acknowledged (it died, or Postgres refused) are claimed by any
consumer once idle for `reclaim_seconds` and written again; the unique stream id makes an
entry that was in fact committed a no-op. Rows that cannot reach Redis go to the local
buffer of `UsageWriter` instead (spooled to disk at shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any

from psycopg.errors import DataError
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollgate_gateway import metrics
from tollgate_gateway.storage.cancellation import reraise_lost_cancel
from tollgate_gateway.usage.writer import insert_lines

log = logging.getLogger(__name__)

STREAM = "tg:usage"
GROUP = "tg-writers"
FIELD = b"r"


def consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def to_lines(entries: list[Any]) -> tuple[list[bytes], str]:
    """The ids and COPY data (row, tab, stream id) of stream entries; entries deleted
    meanwhile (no fields) are skipped."""
    ids: list[bytes] = []
    parts: list[str] = []
    for entry_id, values in entries:
        row = values.get(FIELD) if values else None
        if row is None:
            continue
        ids.append(entry_id)
        parts.append(f"{row.decode()}\t{entry_id.decode()}\n")
    return ids, "".join(parts)


class UsageStream:
    def __init__(
        self,
        redis: Redis,
        engine: AsyncEngine,
        batch_size: int,
        block_seconds: float,
        reclaim_seconds: float,
        stream: str = STREAM,
        pause_seconds: float = 0.0,
    ) -> None:
        self._stream = stream
        # After a batch that was not full, wait this long before reading again, so that rows
        # are written in batches (one COPY per interval) rather than one transaction per
        # request: the entries are durable in Redis meanwhile.
        self._pause = pause_seconds
        self._wake = asyncio.Event()
        self._redis = redis
        self._engine = engine
        self._batch = batch_size
        self._block_ms = max(1, int(block_seconds * 1000))
        self._reclaim_ms = int(reclaim_seconds * 1000)
        self._me = consumer_name()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._failing = False
        self._own_pending = True  # entries we read before a failure (or a restart of ours)

    async def start(self) -> None:
        try:
            await self._redis.xgroup_create(self._stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        except (RedisError, OSError) as exc:
            log.warning("usage stream not reachable yet (%s); will retry", exc)
        self._task = asyncio.create_task(self._run(), name="usage-stream")

    async def stop(self, grace: float = 10.0) -> None:
        """Finish the batch in hand and stop; what is left stays in Redis for the others."""
        self._stopping = True
        self._wake.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError, OSError):
            pending = await self._redis.xpending(self._stream, GROUP)
            consumers = {c["name"]: c["pending"] for c in pending.get("consumers") or []}
            if not consumers.get(self._me.encode()):
                await self._redis.xgroup_delconsumer(self._stream, GROUP, self._me)

    async def close(self) -> None:
        await self._redis.aclose()

    async def _run(self) -> None:
        claimed_at = 0.0
        while not self._stopping:
            try:
                if self._own_pending:
                    await self._retry_own()
                if time.monotonic() - claimed_at >= self._reclaim_ms / 2000:
                    claimed_at = time.monotonic()
                    await self.reclaim()
                reply: Any = await self._redis.xreadgroup(
                    GROUP, self._me, {self._stream: ">"}, count=self._batch, block=self._block_ms
                )
                read = 0
                for _, entries in reply or []:
                    read += len(entries)
                    await self._commit(entries, redelivered=False)
                if self._failing:
                    log.warning("usage stream drains again")
                    self._failing = False
                if 0 < read < self._batch and self._pause > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._pause)
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis lost the stream (restart without data)
                    with contextlib.suppress(ResponseError):
                        await self._redis.xgroup_create(self._stream, GROUP, id="0", mkstream=True)
                    continue
                await self._trouble(exc)
            except Exception as exc:  # Redis or Postgres: entries stay pending, retried later
                await self._trouble(exc)

    async def _retry_own(self) -> None:
        """Write again what this consumer read but could not commit (Postgres refused):
        at once once it answers, not after the idle time that claims others' entries."""
        while True:
            reply: Any = await self._redis.xreadgroup(
                GROUP, self._me, {self._stream: "0"}, count=self._batch
            )
            entries = [e for _, batch in reply or [] for e in batch]
            if not entries:
                break
            await self._commit(entries, redelivered=True)
        self._own_pending = False

    async def _trouble(self, exc: Exception) -> None:
        self._own_pending = True
        if not self._failing:
            log.warning("usage stream cannot drain (%s); entries wait in redis", exc)
            self._failing = True
        metrics.USAGE_FLUSH_ERRORS.inc()
        await asyncio.sleep(1.0)

    async def reclaim(self) -> int:
        """Write the entries other consumers (or we) read and never acknowledged."""
        start: Any = "0-0"
        written = 0
        while True:
            result = await self._redis.xautoclaim(
                self._stream, GROUP, self._me, self._reclaim_ms, start_id=start, count=self._batch
            )
            start, entries = result[0], result[1]
            if entries:
                written += await self._commit(entries, redelivered=True)
            if start in (b"0-0", "0-0"):
                break
        await self._forget_dead_consumers()
        return written

    async def _forget_dead_consumers(self) -> None:
        """Drop consumers long silent with nothing pending (gateways that were killed and
        whose entries were claimed), so the group does not collect them forever."""
        silent_ms = 10 * self._reclaim_ms
        for consumer in await self._redis.xinfo_consumers(self._stream, GROUP):
            if consumer.get("pending") == 0 and consumer.get("idle", 0) > silent_ms:
                await self._redis.xgroup_delconsumer(self._stream, GROUP, consumer["name"])

    async def _one_by_one(self, entries: list[Any]) -> int:
        written = 0
        for entry in entries:
            ids, data = to_lines([entry])
            if not ids:
                continue
            try:
                await insert_lines(self._engine, data, redelivered=True)
                written += 1
            except DataError as exc:
                metrics.USAGE_DROPPED.inc()
                log.error("usage stream entry %s refused by postgres, dropped: %s", ids[0], exc)
        return written

    async def _commit(self, entries: list[Any], redelivered: bool) -> int:
        ids, data = to_lines(entries)
        if ids:
            started = time.perf_counter()
            written = len(ids)
            try:
                await insert_lines(self._engine, data, redelivered)
            except DataError:
                # An entry Postgres can never take (corrupt, or written by a gateway with a
                # bug) would fail its batch for ever, and this consumer retries its own
                # pending entries before reading new ones: every later row would wait behind
                # it. Write the batch one entry at a time; drop and count only the refused.
                written = await self._one_by_one(entries)
            except Exception as exc:
                if redelivered or "unique" not in str(exc).lower():
                    raise
                await insert_lines(self._engine, data, redelivered=True)
            elapsed = time.perf_counter() - started
            metrics.USAGE_FLUSH_SECONDS.observe(elapsed)
            metrics.DB_LATENCY.labels("usage_flush").observe(elapsed)
            metrics.USAGE_WRITTEN.inc(written)
        all_ids = [entry_id for entry_id, _ in entries]
        with reraise_lost_cancel():
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xack(self._stream, GROUP, *all_ids)
                pipe.xdel(self._stream, *all_ids)
                await pipe.execute()
        return len(ids)
