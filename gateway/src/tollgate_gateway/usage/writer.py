"""Usage events, written off the hot path in batches.

Requests append to an in-memory buffer; a background task inserts batches. When
Postgres is unreachable rows stay buffered (up to a bound) and are retried; on
shutdown whatever cannot be written is spooled to a local file that the next
start replays, so nothing is lost on a graceful stop or a database outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from psycopg.errors import DataError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollgate_gateway import metrics

log = logging.getLogger(__name__)


@dataclass(slots=True)
class UsageRow:
    ts: datetime
    request_id: str
    key_id: uuid.UUID | None
    app: str | None
    alias: str | None
    backend_tag: str | None
    endpoint: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    latency_ms: float
    ttft_ms: float | None
    streamed: bool
    error_class: str | None


COLUMNS = ", ".join([*(f.name for f in fields(UsageRow)), "stream_id"])
COPY_ROWS = f"COPY usage_events ({COLUMNS}) FROM STDIN"
# Rows that may have been written before (redelivered stream entries): through a temporary
# table, skipping the entries already there.
COPY_INCOMING = f"COPY usage_incoming ({COLUMNS}) FROM STDIN"
CREATE_INCOMING = (
    "CREATE TEMPORARY TABLE usage_incoming (LIKE usage_events INCLUDING DEFAULTS) ON COMMIT DROP"
)
_CONFLICT = "ON CONFLICT (stream_id) WHERE stream_id IS NOT NULL DO NOTHING"
# Column names from UsageRow, no input.
MERGE_INCOMING = (
    f"INSERT INTO usage_events ({COLUMNS}) SELECT {COLUMNS} FROM usage_incoming {_CONFLICT}"  # noqa: S608
)
_SPECIAL = re.compile(r"[\\\t\n\r\x00]")
# NUL cannot be stored in a text column at all: dropped (it can only come from a client's
# string, e.g. a made-up model name on a refused request).
_ESCAPED = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\x00": ""}
NULL = "\\N"


def _text(value: str | None) -> str:
    if value is None:
        return NULL
    if _SPECIAL.search(value) is None:
        return value
    return _SPECIAL.sub(lambda m: _ESCAPED[m.group()], value)


def copy_line(row: UsageRow) -> str:
    """One row in COPY's text format, columns in UsageRow's order."""
    return "\t".join(
        (
            row.ts.isoformat(),
            _text(row.request_id),
            NULL if row.key_id is None else str(row.key_id),
            _text(row.app),
            _text(row.alias),
            _text(row.backend_tag),
            _text(row.endpoint),
            str(row.status),
            str(row.prompt_tokens),
            str(row.completion_tokens),
            str(row.cost),
            repr(row.latency_ms),
            NULL if row.ttft_ms is None else repr(row.ttft_ms),
            "t" if row.streamed else "f",
            _text(row.error_class),
        )
    )


async def insert_rows(engine: AsyncEngine, rows: list[UsageRow]) -> None:
    """Insert rows in one transaction with COPY: one round trip, and several times less CPU
    than an executemany INSERT (or psycopg's per-value adapters)."""
    await insert_lines(engine, "".join([copy_line(row) + "\t\\N\n" for row in rows]))


async def insert_lines(engine: AsyncEngine, data: str, redelivered: bool = False) -> None:
    """Insert COPY lines (`copy_line` and a stream id) in one transaction. `redelivered`:
    some may be in the table already (by stream id) and are skipped."""
    async with engine.begin() as conn:
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection  # psycopg.AsyncConnection
        async with driver.cursor() as cursor:
            if not redelivered:
                async with cursor.copy(COPY_ROWS) as copy:
                    await copy.write(data)
                return
            await cursor.execute(CREATE_INCOMING)
            async with cursor.copy(COPY_INCOMING) as copy:
                await copy.write(data)
            await cursor.execute(MERGE_INCOMING)


def _to_json(row: UsageRow) -> bytes:
    return orjson.dumps(asdict(row), default=str)


def _from_json(line: bytes) -> UsageRow:
    data: dict[str, Any] = orjson.loads(line)
    data["ts"] = datetime.fromisoformat(data["ts"])
    data["key_id"] = uuid.UUID(data["key_id"]) if data["key_id"] else None
    data["cost"] = Decimal(data["cost"])
    return UsageRow(**data)


class UsageWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        batch_size: int,
        interval: float,
        max_buffer: int,
        spool_dir: Path,
    ) -> None:
        self._engine = engine
        self._failing = False
        self._batch = batch_size
        self._interval = interval
        self._max = max_buffer
        self._spool_dir = spool_dir
        self._buffer: list[UsageRow] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def record(self, row: UsageRow) -> None:
        if len(self._buffer) >= self._max:
            self.dropped += 1
            metrics.USAGE_DROPPED.inc()
            return
        self._buffer.append(row)
        metrics.USAGE_QUEUE.set(len(self._buffer))
        if len(self._buffer) >= self._batch:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def start(self) -> None:
        await self._replay_spool()
        self._task = asyncio.create_task(self._run(), name="usage-writer")

    async def stop(self, grace: float = 10.0) -> None:
        """Flush everything; spool to disk what Postgres does not take in time."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        deadline = time.monotonic() + grace
        while self._buffer and time.monotonic() < deadline:
            if not await self.flush():
                await asyncio.sleep(0.2)
        if self._buffer:
            self._spool(self._buffer)
            self._buffer = []

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            # Write what is there now; rows that arrive meanwhile wait for the next interval,
            # or for a full batch (record() wakes us). Draining until empty would write a
            # handful of rows at a time, each batch paying a whole transaction.
            due = len(self._buffer)
            while due > 0 and self._buffer:
                if not await self.flush():
                    await asyncio.sleep(min(5.0, self._interval * 4))
                    break
                due -= self._batch

    async def flush(self) -> bool:
        """Write one batch; False when Postgres refused (rows are kept)."""
        if not self._buffer:
            return True
        batch = self._buffer[: self._batch]
        started = time.perf_counter()
        try:
            await insert_rows(self._engine, batch)
        except DataError:
            # A row Postgres can never take would block every batch behind it: write the
            # rows one at a time and drop (and count) only the ones refused.
            await self._one_by_one(batch)
            return True
        except Exception as exc:
            if not self._failing:  # one line per outage, not one per retry
                log.warning("usage flush of %d rows failed, will retry: %s", len(batch), exc)
                self._failing = True
            metrics.USAGE_FLUSH_ERRORS.inc()
            return False
        if self._failing:
            log.warning("usage flush works again; %d rows still buffered", len(self._buffer))
            self._failing = False
        del self._buffer[: len(batch)]
        elapsed = time.perf_counter() - started
        metrics.USAGE_FLUSH_SECONDS.observe(elapsed)
        metrics.DB_LATENCY.labels("usage_flush").observe(elapsed)
        metrics.USAGE_WRITTEN.inc(len(batch))
        metrics.USAGE_QUEUE.set(len(self._buffer))
        return True

    async def _one_by_one(self, batch: list[UsageRow]) -> None:
        written = 0
        for row in batch:
            try:
                await insert_rows(self._engine, [row])
                written += 1
            except DataError as exc:
                self.dropped += 1
                metrics.USAGE_DROPPED.inc()
                log.error("usage row of request %s refused by postgres: %s", row.request_id, exc)
        del self._buffer[: len(batch)]
        metrics.USAGE_WRITTEN.inc(written)
        metrics.USAGE_QUEUE.set(len(self._buffer))

    def _spool(self, rows: list[UsageRow]) -> None:
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        path = self._spool_dir / f"usage-{os.getpid()}-{time.time_ns()}.jsonl"
        with path.open("wb") as fh:
            for row in rows:
                fh.write(_to_json(row) + b"\n")
        log.error("postgres unavailable at shutdown: spooled %d usage rows to %s", len(rows), path)

    async def _replay_spool(self) -> None:
        if not self._spool_dir.is_dir():
            return
        for path in sorted(self._spool_dir.glob("usage-*.jsonl")):
            claimed = path.with_suffix(".replaying")
            try:
                path.rename(claimed)  # another worker may race us for the same file
            except OSError:
                continue
            rows = [_from_json(line) for line in claimed.read_bytes().splitlines() if line]
            try:
                await insert_rows(self._engine, rows)
            except Exception as exc:
                claimed.rename(path)
                log.warning("could not replay %s yet: %s", path.name, exc)
                continue
            claimed.unlink()
            log.info("replayed %d spooled usage rows from %s", len(rows), path.name)
