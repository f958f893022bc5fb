"""ApiKey handlers."""

from __future__ import annotations

from typing import Any

import kopf

from tollgate_operator.handlers.common import context, reconciling, resync
from tollgate_operator.resources import APIKEYS, GROUP, VERSION, ObjectRef
from tollgate_operator.settings import get_settings

KIND = "ApiKey"


@kopf.on.resume(GROUP, VERSION, APIKEYS)
@kopf.on.create(GROUP, VERSION, APIKEYS)
@kopf.on.update(GROUP, VERSION, APIKEYS)
async def apikey_changed(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    async with reconciling(KIND, "change", retry, body):
        await context(memo).apikeys.reconcile(ObjectRef.of(APIKEYS, body))


@kopf.timer(GROUP, VERSION, APIKEYS, interval=get_settings().apikey_resync_seconds)
async def apikey_resync(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Drift (a row or the Secret changed by hand) and the end of rotation grace periods."""
    ctx = context(memo)
    ref = ObjectRef.of(APIKEYS, body)
    await resync(KIND, lambda: ctx.apikeys.reconcile(ref), ctx.settings.apikey_resync_seconds, body)


@kopf.on.delete(GROUP, VERSION, APIKEYS)
async def apikey_deleted(
    body: kopf.Body, memo: kopf.Memo, logger: Any, retry: int, **_: Any
) -> None:
    async with reconciling(KIND, "delete", retry, body):
        count = await context(memo).apikeys.revoke(ObjectRef.of(APIKEYS, body))
    logger.info("revoked %d key(s) at the gateway", count)
