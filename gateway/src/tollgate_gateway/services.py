"""The object graph of a running gateway, built once in the lifespan (see main.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tollgate_gateway import metrics
from tollgate_gateway.accesslog import AccessLog
from tollgate_gateway.admin.logins import LoginGuard
from tollgate_gateway.audit import recorder  # noqa: F401  (registers the flush hook)
from tollgate_gateway.audit.service import AuditPruner, LoginRecorder
from tollgate_gateway.catalog.service import Catalog
from tollgate_gateway.chat.service import ProxyService
from tollgate_gateway.config import Settings
from tollgate_gateway.keys.service import KeyService
from tollgate_gateway.limits.service import Limiter
from tollgate_gateway.messages.service import MessagesService
from tollgate_gateway.pools.service import PoolQueue
from tollgate_gateway.responses.service import ResponsesService
from tollgate_gateway.routing.health import Ejector
from tollgate_gateway.routing.service import Router, SharedLoad
from tollgate_gateway.storage.changes import ChangeFeed, Listener
from tollgate_gateway.storage.outage import DatabaseHealth
from tollgate_gateway.storage.responses import ResponseStore
from tollgate_gateway.storage.upstream import Upstream
from tollgate_gateway.tracing import Tracing
from tollgate_gateway.usage.service import UsageService
from tollgate_gateway.usage.stream import UsageStream
from tollgate_gateway.usage.writer import UsageWriter
from tollgate_schema.db import create_engine, wait_for_schema

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis
    keys: KeyService
    catalog: Catalog
    feed: ChangeFeed
    limiter: Limiter
    usage: UsageService
    writer: UsageWriter
    upstream: Upstream
    proxy: ProxyService
    messages: MessagesService
    responses: ResponsesService
    stream: UsageStream | None
    login_audit: LoginRecorder
    audit_pruner: AuditPruner
    admin_engine: AsyncEngine
    logins: LoginGuard

    @classmethod
    async def build(cls, settings: Settings) -> Services:
        engine = create_engine(
            settings.sqlalchemy_dsn,
            pool_timeout=settings.db_pool_timeout_seconds,
            connect_timeout=settings.db_connect_timeout_seconds,
        )
        # No waiting here: a gateway without its schema refuses to start (the init container
        # of its Pod waits); one attempt, the same check.
        await wait_for_schema(engine, 0, wait_for_migration=False)
        redis = Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout_seconds,
            socket_connect_timeout=settings.redis_timeout_seconds,
            health_check_interval=10,
        )
        health = DatabaseHealth(settings.db_outage_grace_seconds)
        keys = KeyService(
            engine,
            settings.key_pepper.get_secret_value().encode(),
            settings.key_cache_ttl_seconds,
            settings.key_cache_max_entries,
            health,
        )
        catalog = Catalog(engine, settings.ollama_base_url, health)
        feed = ChangeFeed(settings.psycopg_dsn, cache_listener(keys, catalog))
        usage = UsageService(engine)
        limiter = Limiter(
            redis,
            usage,
            settings.redis_failure_policy,
            settings.concurrency_lease_seconds,
            usage_stream=settings.usage_stream,
        )
        writer = UsageWriter(
            engine,
            settings.usage_batch_size,
            settings.usage_flush_interval_seconds,
            settings.usage_max_buffer,
            settings.usage_spool_dir,
        )
        stream: UsageStream | None = None
        if settings.usage_via_redis:
            block = min(settings.usage_flush_interval_seconds, 1.0)
            drainer = Redis.from_url(  # blocking reads: a timeout longer than the block
                settings.redis_url,
                socket_timeout=block + max(2.0, settings.redis_timeout_seconds),
                socket_connect_timeout=settings.redis_timeout_seconds,
            )
            stream = UsageStream(
                drainer,
                engine,
                settings.usage_batch_size,
                block,
                settings.usage_reclaim_seconds,
                stream=settings.usage_stream,
                pause_seconds=settings.usage_flush_interval_seconds,
            )
        upstream = Upstream(
            settings.upstream_connect_timeout_seconds,
            settings.upstream_read_timeout_seconds,
            settings.upstream_max_connections,
        )
        router = Router(
            upstream,
            catalog.all,  # also reloads the catalog when the change feed said so
            poll_seconds=settings.routing_poll_seconds,
            attempts=settings.routing_attempts,
            retry_seconds=settings.routing_retry_seconds,
            ejector=Ejector(settings.routing_eject_failures, settings.routing_eject_seconds),
            shared=SharedLoad(redis, settings.routing_poll_seconds),
        )
        pools = PoolQueue(
            redis,
            limiter.scripts,
            catalog.get,
            max_wait_seconds=settings.queue_max_wait_seconds,
            max_waiting=settings.queue_max_waiting,
            fairness=settings.queue_fairness,
            lease_seconds=settings.queue_lease_seconds,
            poll_seconds=settings.queue_poll_seconds,
            per_key=settings.metrics_per_key,
        )
        proxy = ProxyService(
            keys,
            catalog,
            limiter,
            upstream,
            writer,
            settings.default_max_tokens,
            settings.metrics_per_key,
            settings.prompt_bytes_per_token,
            durable_usage=stream is not None,
            access_log=AccessLog(
                settings.access_log, settings.access_log_sample, settings.log_json
            ),
            tracing=Tracing(
                settings.otlp_endpoint, settings.trace_sample_ratio, settings.otel_service_name
            ),
            router=router,
            pools=pools,
            queue_keepalive=settings.queue_keepalive_seconds,
            prompt_tokens_per_image=settings.prompt_tokens_per_image,
        )
        stored = ResponseStore(
            engine,
            settings.responses_retention_seconds,
            settings.responses_sweep_interval_seconds,
        )
        # The admin API has a small pool of its own: however busy it gets (a login flood),
        # it cannot take connections from the proxy's key lookups and usage writes.
        admin_engine = create_engine(
            settings.sqlalchemy_dsn,
            pool_size=settings.admin_db_pool_size,
            max_overflow=0,
            pool_timeout=settings.admin_db_pool_timeout_seconds,
            connect_timeout=settings.db_connect_timeout_seconds,
        )
        logins = LoginGuard(
            redis,
            settings.login_window_seconds,
            settings.login_attempts_per_address,
            settings.login_failures_per_email,
            settings.login_hash_workers,
            settings.login_hash_queue,
        )
        return cls(
            settings,
            engine,
            async_sessionmaker(admin_engine, expire_on_commit=False),
            redis,
            keys,
            catalog,
            feed,
            limiter,
            usage,
            writer,
            upstream,
            proxy,
            MessagesService(proxy),
            ResponsesService(proxy, stored),
            stream,
            LoginRecorder(admin_engine),
            AuditPruner(engine, settings.audit_retention_days),
            admin_engine,
            logins,
        )

    async def start(self) -> None:
        metrics.DB_UP.set(1)  # build() has just read the schema version
        self.feed.start()
        self.limiter.start()
        await self.writer.start()
        if self.stream is not None:
            await self.stream.start()
        await self.catalog.reload()
        if self.proxy.router is not None:
            self.proxy.router.start()
        if self.proxy.pools is not None:
            self.proxy.pools.start()
        self.responses.store.start()
        self.audit_pruner.start()

    async def stop(self) -> None:
        """Graceful stop: finish settlements, flush usage, close clients."""
        await self.audit_pruner.stop()
        await self.responses.store.stop()
        await self.proxy.drain()
        if self.proxy.pools is not None:
            await self.proxy.pools.stop()
        if self.stream is not None:
            await self.stream.stop()
            await self.stream.close()
        await self.writer.stop()
        await self.limiter.stop()
        await self.feed.stop()
        if self.proxy.router is not None:
            await self.proxy.router.stop()
        await self.upstream.close()
        self.proxy.tracing.shutdown()
        self.logins.close()
        await self.redis.aclose()
        await self.admin_engine.dispose()
        await self.engine.dispose()


def cache_listener(keys: KeyService, catalog: Catalog) -> Listener:
    """The change feed's callbacks: drop what changed from the key and alias caches."""

    def everything() -> None:
        keys.invalidate_all()
        catalog.invalidate()

    def healthy(up: bool) -> None:
        keys.feed_healthy = up
        catalog.feed_healthy = up

    return Listener(
        key=keys.invalidate, models=catalog.invalidate, everything=everything, healthy=healthy
    )
