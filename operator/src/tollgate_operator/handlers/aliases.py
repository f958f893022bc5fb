"""ModelAlias handlers: spec changes, the pull daemon, deletion."""

from __future__ import annotations

from typing import Any

import kopf

from tollgate_operator.handlers.common import context, daemon_loop, reconciling
from tollgate_operator.resources import GROUP, MODELALIASES, VERSION, ObjectRef
from tollgate_operator.services.aliases import PullMemory
from tollgate_operator.services.common import pool_key

KIND = "ModelAlias"


@kopf.on.resume(GROUP, VERSION, MODELALIASES)
@kopf.on.create(GROUP, VERSION, MODELALIASES)
@kopf.on.update(GROUP, VERSION, MODELALIASES)
async def alias_changed(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    async with reconciling(KIND, "change", retry, body):
        await context(memo).aliases.apply_spec(ObjectRef.of(MODELALIASES, body))


@kopf.daemon(GROUP, VERSION, MODELALIASES, cancellation_timeout=10)
async def alias_daemon(
    stopped: kopf.DaemonStopped, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """Pull the model where it is missing; keep status and the gateway row current."""
    ctx = context(memo)
    ref = ObjectRef.of(MODELALIASES, body)
    pool = str((body.get("spec") or {}).get("poolRef", {}).get("name", ""))
    memory = PullMemory(max_delay=ctx.settings.pull_retry_max_seconds)
    await daemon_loop(
        stopped,
        ctx,
        (ref.key, pool_key(ref.namespace, pool)),
        KIND,
        lambda: ctx.aliases.sync(ref, memory),
        ctx.settings.alias_resync_seconds,
    )


@kopf.on.delete(GROUP, VERSION, MODELALIASES)
async def alias_deleted(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    async with reconciling(KIND, "delete", retry, body):
        await context(memo).aliases.delete(ObjectRef.of(MODELALIASES, body), retry)
