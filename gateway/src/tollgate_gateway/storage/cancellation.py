"""A cancellation that redis-py lost, raised again.

redis-py's asyncio pipeline can return normally, or fail as a connection error, when its
task is cancelled while the pipeline runs (redis-py 5 to 8). A background loop told to stop
then goes on (a stopped pool queue kept renewing its leases), and a request whose client left
goes on waiting. Around such a call, :func:`reraise_lost_cancel` raises the cancellation
again when the task was cancelled meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def reraise_lost_cancel() -> Iterator[None]:
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    try:
        yield
    except Exception as exc:
        if task is not None and task.cancelling() > before:
            raise asyncio.CancelledError from exc
        raise
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError
