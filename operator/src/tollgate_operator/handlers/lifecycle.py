"""Operator start and stop: kopf settings, clients into memo, login, liveness probe."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from tollgate_operator.builders.labels import POOL_LABEL
from tollgate_operator.factory import build_context
from tollgate_operator.handlers.common import context
from tollgate_operator.settings import get_settings

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


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
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
