"""The gateway application: create_app() and its lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis.exceptions import RedisError
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from tollgate_gateway import __version__, metrics, openapi
from tollgate_gateway.admin.console import router as console_router
from tollgate_gateway.admin.router import router as admin_router
from tollgate_gateway.audit.router import router as audit_router
from tollgate_gateway.chat.router import PROXY_ROUTES as OPENAI_PROXY_ROUTES
from tollgate_gateway.chat.router import routes as openai_routes
from tollgate_gateway.chat.schemas import Endpoint
from tollgate_gateway.chat.service import ProxyService, Reply
from tollgate_gateway.config import RedisFailurePolicy, Settings, get_settings
from tollgate_gateway.console.static import console_routes
from tollgate_gateway.errors import install_handlers
from tollgate_gateway.keys.router import routes as key_routes
from tollgate_gateway.messages.router import routes as messages_routes
from tollgate_gateway.middleware import FastRoute, Handle, RequestContextMiddleware, serve_proxy
from tollgate_gateway.native.router import PROXY_ROUTES as NATIVE_PROXY_ROUTES
from tollgate_gateway.native.router import routes as native_routes
from tollgate_gateway.responses.router import routes as responses_routes
from tollgate_gateway.services import Services
from tollgate_gateway.tracing import RequestTrace
from tollgate_schema.db import SchemaState, current_revision, schema_state

log = logging.getLogger("tollgate_gateway")
PROXY_ROUTES = {**OPENAI_PROXY_ROUTES, **NATIVE_PROXY_ROUTES}


class GatewayApp(FastAPI):
    """FastAPI, except that POSTs to the proxy routes (every API's inference requests) go
    straight to `serve_proxy`: the hot path does without the framework's middleware, routing
    and streaming machinery. Until the services are up they take the framework's routes."""

    max_body_bytes = 0
    fast_routes: dict[str, FastRoute] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = self.fast_routes.get(scope["path"])
            if route is not None:
                await serve_proxy(scope, receive, send, route, self.max_body_bytes)
                return
        await super().__call__(scope, receive, send)


def fast_routes(services: Services) -> dict[str, FastRoute]:
    """What `serve_proxy` serves, by path: the OpenAI and Ollama proxy routes, the Responses
    and Messages APIs' POSTs."""
    proxy = services.proxy
    routes = {
        path: FastRoute(endpoint, _proxied(proxy, endpoint), proxy.tracing)
        for path, endpoint in PROXY_ROUTES.items()
    }
    routes["/v1/responses"] = FastRoute(
        Endpoint.RESPONSES, services.responses.create, proxy.tracing
    )
    routes["/v1/messages"] = FastRoute(Endpoint.MESSAGES, services.messages.create, proxy.tracing)
    return routes


def _proxied(proxy: ProxyService, endpoint: Endpoint) -> Handle:
    async def handle(
        raw: bytes,
        authorization: str | None,
        _x_api_key: str | None,
        request_id: str,
        trace: RequestTrace | None,
    ) -> Reply:
        return await proxy.handle(endpoint, raw, authorization, request_id, trace)

    return handle


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await Services.build(settings)
        await services.start()
        app.state.services = services
        if isinstance(app, GatewayApp):
            app.fast_routes = fast_routes(services)
        log.info("gateway ready; upstream default %s", settings.ollama_base_url)
        try:
            yield
        finally:
            if isinstance(app, GatewayApp):
                app.fast_routes = {}
            await services.stop()
            log.info("gateway stopped; usage flushed")

    app = GatewayApp(
        title="Tollgate gateway",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    install_handlers(app)
    openapi.install(app)
    app.router.routes.extend(openai_routes)
    app.router.routes.extend(native_routes)
    app.router.routes.extend(responses_routes)
    app.router.routes.extend(messages_routes)
    app.router.routes.extend(key_routes)
    app.include_router(admin_router)
    app.include_router(audit_router)
    app.include_router(console_router)
    app.add_api_route("/healthz", healthz, methods=["GET"], include_in_schema=False)
    app.add_api_route("/readyz", readyz, methods=["GET"], include_in_schema=False)
    app.router.routes.extend(console_routes(settings.console_dir))
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    app.max_body_bytes = settings.max_body_bytes
    return app


async def healthz() -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    services: Services = request.app.state.services
    checks: dict[str, str] = {}
    health = services.keys.health
    try:
        async with services.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        checks["postgres"] = "ok"
        health.ok()
        revision = await current_revision(services.engine)
        state = schema_state(revision)
        # A newer schema is fine (backward-compatible migrations: upgrades, rollbacks).
        checks["schema"] = "ok" if state is not SchemaState.BEHIND else f"behind ({revision})"
    except Exception as exc:
        checks["postgres"] = f"error: {type(exc).__name__}"
        health.failed(exc)
        # Every pod sees the same outage: failing readiness would take them all out of the
        # Service at once. Within the grace period they serve what they know ("degraded").
        checks["schema"] = "unknown"
    try:
        await services.redis.ping()
        checks["redis"] = "ok"
        metrics.REDIS_UP.set(1)
    except (RedisError, OSError) as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
        metrics.REDIS_UP.set(0)
    checks["change_feed"] = "ok" if services.feed.connected.is_set() else "reconnecting"
    checks["redis_breaker"] = "open" if services.limiter.breaker.open else "closed"
    required = ["postgres", "schema"]
    if services.settings.redis_failure_policy is RedisFailurePolicy.CLOSED:
        required.append("redis")  # under the open policy requests are served without Redis
    ready = all(checks[k] == "ok" for k in required)
    status = "ok" if ready else "not ready"
    if not ready and checks["postgres"] != "ok" and health.within_grace():
        others = [k for k in required if k not in ("postgres", "schema")]
        if all(checks[k] == "ok" for k in others):
            ready, status = True, "degraded"
    body = {"ready": ready, "status": status, "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)
