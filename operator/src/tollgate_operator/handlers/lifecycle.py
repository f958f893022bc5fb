"""Operator start and stop: kopf settings, clients into memo, login, liveness probe."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import kopf

from tollgate_operator.builders.labels import POOL_LABEL
from tollgate_operator.factory import Context, build_context
from tollgate_operator.handlers.common import PASSES, context
from tollgate_operator.services.autoscaler import autoscaler_key
from tollgate_operator.services.orphans import OrphanSweeper
from tollgate_operator.settings import get_settings

logger = logging.getLogger(__name__)

PREFIX = "tollgate.dev"


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    ours = get_settings()
    # Our own finalizer and bookkeeping annotations; nothing of kopf's goes into .status
    # (the CRD schemas are closed).
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    # The CRDs are installed before the operator and namespaces are named explicitly: no
    # watching CRDs or namespaces, so the operator needs no cluster-wide read on either.
    settings.scanning.disabled = True
    # One active replica is ensured by our Lease (see leader.py), not kopf's peering.
    settings.peering.standalone = True
    settings.posting.enabled = True
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "tollgate-operator"
    settings.posting.reporting_instance = ours.identity
    # Only the Pods of pools are interesting; filter them on the server.
    settings.watching.label_selectors["v1", "pods"] = POOL_LABEL
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    memo.ctx = await build_context(ours)
    if memo.ctx.demand is not None:
        memo.listening = asyncio.create_task(memo.ctx.demand.listen(wake_pool(memo.ctx)))
    if ours.orphan_sweep_seconds > 0:
        namespaces = getattr(memo, "namespaces", None) or ()
        sweeper = OrphanSweeper(memo.ctx.db, memo.ctx.kube, ours.orphan_grace_seconds, namespaces)
        memo.sweeping = asyncio.create_task(sweep_forever(sweeper, ours.orphan_sweep_seconds))


async def sweep_forever(sweeper: OrphanSweeper, every: float) -> None:
    """The orphan sweep at start and then every `every` seconds; a failed pass (Postgres or
    the API server away) is logged and tried again at the next."""
    while True:
        try:
            await sweeper.sweep()
        except Exception as exc:
            logger.warning("orphan sweep failed, next in %.0f s: %s", every, exc)
        await asyncio.sleep(every)


def wake_pool(ctx: Context) -> Callable[[str], None]:
    """A gateway announced a request waiting for "<namespace>/<pool>": sample it now."""

    def wake(pool: str) -> None:
        namespace, _, name = pool.partition("/")
        if name:
            ctx.wakers.wake(autoscaler_key(namespace, name))

    return wake


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await shut_down(memo)


async def shut_down(memo: kopf.Memo) -> None:
    """Our background tasks, then the handlers' passes in flight, then the clients."""
    for name in ("sweeping", "listening"):
        task: asyncio.Task[None] | None = getattr(memo, name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    await PASSES.stop()  # before the clients they use close
    if getattr(memo, "ctx", None) is not None:
        await context(memo).close()


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account, else the kubeconfig: the same client library as k8s.py."""
    info: kopf.ConnectionInfo | None = await kopf.login_via_async_client(**kwargs)
    return info


@kopf.on.probe(id="identity")
async def identity(**_: Any) -> str:
    return get_settings().identity
