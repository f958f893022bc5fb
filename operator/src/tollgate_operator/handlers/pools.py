"""OllamaPool handlers, and the Pod watch that wakes pools and aliases."""

from __future__ import annotations

from typing import Any

import kopf

from tollgate_operator.builders.labels import POOL_LABEL
from tollgate_operator.factory import Context
from tollgate_operator.handlers.common import context, daemon_loop, reconciling
from tollgate_operator.resources import GROUP, OLLAMAPOOLS, VERSION, ObjectRef
from tollgate_operator.services.common import pool_key

KIND = "OllamaPool"


@kopf.on.resume(GROUP, VERSION, OLLAMAPOOLS)
@kopf.on.create(GROUP, VERSION, OLLAMAPOOLS)
@kopf.on.update(GROUP, VERSION, OLLAMAPOOLS)
async def pool_changed(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    ctx = context(memo)
    ref = ObjectRef.of(OLLAMAPOOLS, body)
    async with reconciling(KIND, "change", retry, body):
        await ctx.pools.reconcile(ref)
    ctx.wakers.wake(pool_key(ref.namespace, ref.name))


@kopf.daemon(GROUP, VERSION, OLLAMAPOOLS, cancellation_timeout=10)
async def pool_daemon(
    stopped: kopf.DaemonStopped, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """Children drift and status, every resync interval or when a Pod of the pool changes."""
    ctx = context(memo)
    ref = ObjectRef.of(OLLAMAPOOLS, body)
    try:
        await daemon_loop(
            stopped,
            ctx,
            (ref.key,),
            KIND,
            lambda: _pass(ctx, ref),
            ctx.settings.pool_resync_seconds,
        )
    finally:
        if ref.deleting:
            ctx.pools.forget(ref)


async def _pass(ctx: Context, ref: ObjectRef) -> float:
    await ctx.pools.reconcile(ref)
    return ctx.settings.pool_resync_seconds


@kopf.on.event("", "v1", "pods", labels={POOL_LABEL: kopf.PRESENT})
async def pool_pod_event(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    ctx = context(memo)
    pool = labels[POOL_LABEL]
    if namespace is None:
        return
    ctx.wakers.wake((OLLAMAPOOLS, namespace, pool))
    ctx.wakers.wake(pool_key(namespace, pool))
