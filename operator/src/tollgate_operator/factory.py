"""Builds every client and service once, at operator start; closes them at the end."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from tollgate_operator.db import Database
from tollgate_operator.demand import DemandReader
from tollgate_operator.k8s import Kube, post_event
from tollgate_operator.ollama import OllamaClient
from tollgate_operator.services.aliases import AliasService
from tollgate_operator.services.apikeys import ApiKeyService
from tollgate_operator.services.autoscaler import Autoscaler
from tollgate_operator.services.common import Locks, StatusWriter, Wakers
from tollgate_operator.services.pools import PoolService
from tollgate_operator.settings import Settings


@dataclass
class Context:
    settings: Settings
    kube: Kube
    db: Database
    http: aiohttp.ClientSession
    wakers: Wakers
    apikeys: ApiKeyService
    pools: PoolService
    aliases: AliasService
    scaler: Autoscaler
    demand: DemandReader | None = None

    async def close(self) -> None:
        if self.demand is not None:
            await self.demand.close()
        await self.http.close()
        await self.kube.close()
        await self.db.close()


async def build_context(settings: Settings) -> Context:
    kube = await Kube.connect()
    db = Database.connect(settings.postgres_dsn, settings.postgres_connect_timeout_seconds)
    # Pods are reached by IP: no proxies from the environment, no connection limit per host.
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=200, limit_per_host=0), trust_env=False
    )
    ollama = OllamaClient(
        http,
        settings.ollama_connect_timeout_seconds,
        settings.ollama_read_timeout_seconds,
        settings.insecure_registry_list,
    )
    locks, wakers, statuses = Locks(), Wakers(), StatusWriter(kube)
    demand = (
        DemandReader(settings.redis_url, settings.demand_fresh_seconds)
        if settings.redis_url
        else None
    )
    scaler = Autoscaler(settings, kube, demand, locks, wakers, statuses, post_event)
    pools = PoolService(settings, kube, ollama, locks, statuses, post_event, scaler)
    return Context(
        settings=settings,
        kube=kube,
        db=db,
        http=http,
        wakers=wakers,
        apikeys=ApiKeyService(settings, kube, db, locks, statuses, post_event),
        pools=pools,
        aliases=AliasService(
            settings, kube, db, ollama, pools, locks, wakers, statuses, post_event
        ),
        scaler=scaler,
        demand=demand,
    )
