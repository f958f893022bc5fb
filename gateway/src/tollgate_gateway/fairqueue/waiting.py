"""Futures and deadlines around :class:`FairQueue` for one gateway process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tollgate_gateway.fairqueue.core import FairQueue, QueueFull, Ticket


class WaitTimeout(Exception):
    """The request waited past its deadline; ``waited`` is how long (seconds)."""

    def __init__(self, waited: float) -> None:
        super().__init__(f"waited {waited:.3f} s for a slot")
        self.waited = waited


class AsyncFairQueue:
    def __init__(self, capacity: int, max_waiting: int) -> None:
        self.core = FairQueue(capacity, max_waiting)
        self._futures: dict[int, asyncio.Future[None]] = {}

    @asynccontextmanager
    async def slot(
        self, flow: str, weight: float, max_wait: float, cost: float = 1.0
    ) -> AsyncIterator[float]:
        """Hold a slot for the body of the ``async with``; yields the seconds spent queued.

        Raises ``QueueFull`` at once when the waiting room is full and ``WaitTimeout`` after
        ``max_wait`` seconds; a cancelled waiter (client gone) leaves the queue and takes no slot.
        """
        started = time.monotonic()
        ticket = self.core.submit(flow, weight, cost)
        for other in self.core.take_displaced():  # its place went to this one
            gone = self._futures.get(id(other))
            if gone is not None and not gone.done():
                gone.set_exception(QueueFull("a request earlier in the fair order took its place"))
        if not ticket.granted:
            future = asyncio.get_running_loop().create_future()
            self._futures[id(ticket)] = future
            try:
                await asyncio.wait_for(asyncio.shield(future), max_wait)
            except TimeoutError:
                if not ticket.granted:  # granted in the same tick as the deadline: keep it
                    self._wake(self.core.cancel(ticket))
                    raise WaitTimeout(time.monotonic() - started) from None
            except BaseException:
                self._wake(self.core.cancel(ticket))
                raise
            finally:
                self._futures.pop(id(ticket), None)
        try:
            yield time.monotonic() - started
        finally:
            self._wake(self.core.release(ticket))

    def resize(self, capacity: int) -> None:
        self._wake(self.core.resize(capacity))

    def _wake(self, granted: list[Ticket]) -> None:
        for ticket in granted:
            future = self._futures.get(id(ticket))
            if future is not None and not future.done():
                future.set_result(None)
