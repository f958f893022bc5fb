"""Stored responses (table ``stored_responses``): save, read and delete per key, and the
retention sweep that keeps the table bounded.

Rows older than the retention are invisible at once and deleted by a background sweep in
batches (by age, on a BRIN index), so the table holds about `retention` worth of rows.
Database failures are raised as `ResponseStoreUnavailable`; the service decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollgate_schema.orm import StoredResponse

log = logging.getLogger(__name__)

SWEEP = text(
    "DELETE FROM stored_responses WHERE ctid IN "
    "(SELECT ctid FROM stored_responses WHERE created_at < :cutoff LIMIT :batch)"
)


class ResponseStoreUnavailable(Exception):
    """The database could not be reached or refused the statement."""


@dataclass(frozen=True, slots=True)
class Stored:
    id: str
    alias: str
    previous_response_id: str | None
    input: list[Any]
    response: dict[str, Any]


class ResponseStore:
    def __init__(
        self,
        engine: AsyncEngine,
        retention_seconds: float,
        sweep_interval_seconds: float,
        sweep_batch: int = 5000,
    ) -> None:
        self._engine = engine
        self.retention = timedelta(seconds=retention_seconds)
        self._interval = sweep_interval_seconds
        self._batch = sweep_batch
        self._task: asyncio.Task[None] | None = None

    def _cutoff(self) -> datetime:
        return datetime.now(UTC) - self.retention

    async def save(
        self,
        response_id: str,
        key_id: uuid.UUID,
        alias: str,
        previous_response_id: str | None,
        conversation: list[Any],
        response: dict[str, Any],
    ) -> None:
        statement = insert(StoredResponse).values(
            id=response_id,
            key_id=key_id,
            alias=alias,
            previous_response_id=previous_response_id,
            input=conversation,
            response=response,
        )
        try:
            async with self._engine.begin() as conn:
                await conn.execute(statement)
        except (SQLAlchemyError, OSError) as exc:
            raise ResponseStoreUnavailable(str(exc)) from exc

    async def get(self, response_id: str, key_id: uuid.UUID) -> Stored | None:
        """The key's response, unless it is another key's, deleted or past retention."""
        t = StoredResponse
        query = select(t.id, t.alias, t.previous_response_id, t.input, t.response).where(
            t.id == response_id, t.key_id == key_id, t.created_at >= self._cutoff()
        )
        try:
            async with self._engine.connect() as conn:
                row = (await conn.execute(query)).first()
        except (SQLAlchemyError, OSError) as exc:
            raise ResponseStoreUnavailable(str(exc)) from exc
        if row is None:
            return None
        return Stored(row.id, row.alias, row.previous_response_id, row.input, row.response)

    async def delete(self, response_id: str, key_id: uuid.UUID) -> bool:
        t = StoredResponse
        statement = delete(t).where(t.id == response_id, t.key_id == key_id)
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(statement)
        except (SQLAlchemyError, OSError) as exc:
            raise ResponseStoreUnavailable(str(exc)) from exc
        return bool(result.rowcount)

    async def sweep(self) -> int:
        """Delete rows past retention, a batch per transaction; returns how many."""
        removed = 0
        while True:
            async with self._engine.begin() as conn:
                result = await conn.execute(SWEEP, {"cutoff": self._cutoff(), "batch": self._batch})
            removed += result.rowcount
            if result.rowcount < self._batch:
                return removed

    async def _sweep_forever(self) -> None:
        while True:
            try:
                removed = await self.sweep()
                if removed:
                    log.info("stored responses: %d past retention deleted", removed)
            except (SQLAlchemyError, OSError) as exc:
                log.warning("stored responses: retention sweep failed (%s); will retry", exc)
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
