"""Ollama's admission control: ``parallel`` generations per model, ``max_queue`` waiting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .stats import Stats

BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"


class ServerBusy(Exception):
    """The wait queue is full; Ollama answers 503 with :data:`BUSY_MESSAGE`."""


class Scheduler:
    """Per-model slots (``OLLAMA_NUM_PARALLEL``) and one shared queue (``OLLAMA_MAX_QUEUE``)."""

    def __init__(self, parallel: int, max_queue: int, stats: Stats) -> None:
        self._parallel = parallel
        self._max_queue = max_queue
        self._stats = stats
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._loading: dict[str, asyncio.Lock] = {}

    def loading_lock(self, model: str) -> asyncio.Lock:
        lock = self._loading.get(model)
        if lock is None:
            lock = self._loading[model] = asyncio.Lock()
        return lock

    @asynccontextmanager
    async def slot(self, model: str) -> AsyncIterator[None]:
        """Hold one generation slot of ``model``; raises :class:`ServerBusy` when full."""
        semaphore = self._slots.get(model)
        if semaphore is None:
            semaphore = self._slots[model] = asyncio.Semaphore(self._parallel)
        if semaphore.locked():
            await self._wait(semaphore)
        else:
            await semaphore.acquire()
        self._stats.enter(model)
        try:
            yield
        finally:
            semaphore.release()
            self._stats.leave(model)

    async def _wait(self, semaphore: asyncio.Semaphore) -> None:
        if self._stats.queued >= self._max_queue:
            self._stats.busy_rejections += 1
            raise ServerBusy(BUSY_MESSAGE)
        self._stats.enqueue()
        try:
            await semaphore.acquire()
        finally:
            self._stats.dequeue()
