"""Shared by the handlers: the service context from memo, error translation, daemon loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import kopf
from opentelemetry.trace import Status, StatusCode

from tollgate_operator import metrics, tracing
from tollgate_operator.factory import Context
from tollgate_operator.services.common import Key
from tollgate_operator.services.errors import InvalidSpec, ReconcileError, Unavailable, Waiting

logger = logging.getLogger(__name__)


def context(memo: Any) -> Context:
    ctx: Context = memo.ctx
    return ctx


MAX_RETRY_DELAY = 300.0
STOP_GRACE_SECONDS = 2.0


class Passes:
    """The handlers' passes in flight. kopf leaves a timer that is mid-pass running when the
    operator exits (timers have no cancellation timeout), and its cleanup would then close the
    clients under it; the cleanup ends them first: a short grace to finish, then a cancel."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            yield
        finally:
            if task is not None:
                self._tasks.discard(task)

    def __len__(self) -> int:
        return len(self._tasks)

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        tasks = {task for task in self._tasks if task is not asyncio.current_task()}
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


PASSES = Passes()


def backoff(base: float, retry: int) -> float:
    """Doubling delays from `base` for consecutive failures of one handler, capped."""
    return float(min(MAX_RETRY_DELAY, base * 2 ** min(retry, 10)))


@contextlib.asynccontextmanager
async def reconciling(
    kind: str, trigger: str, retry: int = 0, body: Any = None
) -> AsyncIterator[None]:
    """Count, time and trace a reconcile; turn our errors into kopf's (retry later, or
    never)."""
    began = time.monotonic()
    result = "ok"
    span = tracing.start_reconcile(kind, trigger, body, retry)
    try:
        with PASSES.running():
            yield
    except (Unavailable, Waiting) as err:
        result = "retry"
        metrics.ERRORS.labels(kind, err.reason).inc()
        raise kopf.TemporaryError(err.message, delay=backoff(err.delay, retry)) from err
    except InvalidSpec as err:
        result = "invalid"
        metrics.ERRORS.labels(kind, err.reason).inc()
        raise kopf.PermanentError(f"{err.reason}: {err.message}") from err
    except ReconcileError as err:
        result = "retry"
        metrics.ERRORS.labels(kind, err.reason).inc()
        raise kopf.TemporaryError(err.message, delay=backoff(10, retry)) from err
    except asyncio.CancelledError:
        result = "cancelled"
        raise
    except Exception:
        result = "error"
        metrics.ERRORS.labels(kind, "Unexpected").inc()
        raise
    finally:
        metrics.RECONCILES.labels(kind, trigger, result).inc()
        metrics.RECONCILE_SECONDS.labels(kind).observe(time.monotonic() - began)
        _end(span, result)


def _end(span: Any, result: str) -> None:
    span.set_attribute("tollgate.reconcile.result", result)
    if result != "ok":
        span.set_attribute("error.type", result)
    if result in ("error", "invalid"):
        span.set_status(Status(StatusCode.ERROR, result))
    span.end()


async def resync(
    kind: str,
    step: Callable[[], Awaitable[Any]],
    retry_after: float,
    body: Any = None,
    trigger: str = "resync",
) -> float:
    """A timer's or daemon's pass: errors are logged and counted, never raised (the status
    already says what is wrong; the next pass tries again). Returns the delay it suggests.
    Passes of the "autoscale" trigger (every few seconds per pool) are counted, not traced."""
    began = time.monotonic()
    result = "ok"
    delay = retry_after
    span = tracing.start_reconcile(kind, trigger, body, 0) if trigger != "autoscale" else None
    try:
        with PASSES.running():
            value = await step()
        if isinstance(value, int | float):
            delay = float(value)
    except (Unavailable, Waiting) as err:
        result = "retry"
        metrics.ERRORS.labels(kind, err.reason).inc()
        logger.warning("%s: %s", kind, err.message)
        delay = min(err.delay, retry_after)
    except ReconcileError as err:
        result = "invalid"
        metrics.ERRORS.labels(kind, err.reason).inc()
        logger.info("%s: %s", kind, err.message)
    except asyncio.CancelledError:
        result = "cancelled"
        raise
    except Exception:
        result = "error"
        metrics.ERRORS.labels(kind, "Unexpected").inc()
        logger.exception("%s: unexpected error in a resync", kind)
    finally:
        metrics.RECONCILES.labels(kind, trigger, result).inc()
        metrics.RECONCILE_SECONDS.labels(kind).observe(time.monotonic() - began)
        if span is not None:
            _end(span, result)
    return delay


async def daemon_loop(
    stopped: kopf.DaemonStopped,
    ctx: Context,
    keys: tuple[Key, ...],
    kind: str,
    step: Callable[[], Awaitable[float]],
    interval: float,
    trigger: str = "resync",
) -> None:
    """Run `step` until the object goes away; sleep what it asks, or until woken."""
    wake = asyncio.Event()
    ctx.wakers.register(wake, *keys)
    try:
        while not stopped:
            wake.clear()
            delay = await resync(kind, step, interval, trigger=trigger)
            if delay > 0 and not wake.is_set():
                await _sleep(stopped, wake, delay)
    finally:
        ctx.wakers.unregister(wake, *keys)


async def _sleep(stopped: kopf.DaemonStopped, wake: asyncio.Event, delay: float) -> None:
    async def until_stopped() -> None:
        await stopped.wait()

    tasks = {asyncio.create_task(wake.wait()), asyncio.create_task(until_stopped())}
    try:
        await asyncio.wait(tasks, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
