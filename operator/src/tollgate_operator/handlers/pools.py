"""OllamaPool handlers, and the Pod watch that wakes pools and aliases."""

from __future__ import annotations

from typing import Any

import kopf

from tollgate_operator.builders.labels import POOL_LABEL
from tollgate_operator.factory import Context
from tollgate_operator.handlers.common import context, daemon_loop, reconciling
from tollgate_operator.resources import GROUP, OLLAMAPOOLS, VERSION, ObjectRef
from tollgate_operator.services.autoscaler import autoscaler_key
from tollgate_operator.services.common import pool_key

KIND = "OllamaPool"


@kopf.on.resume(GROUP, VERSION, OLLAMAPOOLS)
@kopf.on.create(GROUP, VERSION, OLLAMAPOOLS)
@kopf.on.update(GROUP, VERSION, OLLAMAPOOLS)
async def pool_changed(
    body: kopf.Body, memo: kopf.Memo, retry: int, diff: kopf.Diff | None = None, **_: Any
) -> None:
    ctx = context(memo)
    ref = ObjectRef.of(OLLAMAPOOLS, body)
    if any(tuple(d[1]) == ("spec", "replicas") for d in diff or ()):
        ctx.scaler.replicas_ignored(ref)
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


def autoscaled(spec: kopf.Spec, **_: Any) -> bool:
    return spec.get("autoscaling") is not None


@kopf.daemon(GROUP, VERSION, OLLAMAPOOLS, cancellation_timeout=10, when=autoscaled)
async def pool_autoscaler(
    stopped: kopf.DaemonStopped, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """Pools with spec.autoscaling (kopf starts and stops it as that comes and goes): demand
    sampled every interval, or at once when a gateway announces a request waiting for the
    pool. Only the leader runs handlers: one decision maker."""
    ctx = context(memo)
    ref = ObjectRef.of(OLLAMAPOOLS, body)
    try:
        await daemon_loop(
            stopped,
            ctx,
            (autoscaler_key(ref.namespace, ref.name),),
            KIND,
            lambda: ctx.scaler.step(ref),
            ctx.settings.autoscale_interval_seconds,
            trigger="autoscale",
        )
    finally:
        ctx.scaler.forget(ref)


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
