"""Route helpers every API's routes share: the proxy service of a request, a `Reply` as a
Starlette response, a proxy endpoint as a route handler, a traced JSON answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tollgate_gateway.chat.schemas import Endpoint
from tollgate_gateway.chat.service import ProxyService, Reply
from tollgate_gateway.errors import ApiError
from tollgate_gateway.storage.outage import UNAVAILABLE
from tollgate_gateway.tracing import RequestTrace


def proxy_of(request: Request) -> ProxyService:
    proxy: ProxyService = request.app.state.services.proxy
    return proxy


async def to_response(reply: Reply) -> Response:
    response: Response
    if reply.settle is not None:  # settled before the answer leaves (see `Reply.settle`)
        reply.settle()
        await asyncio.sleep(0)
    if reply.stream is None:
        after = BackgroundTask(reply.after) if reply.after is not None else None
        response = Response(reply.body, reply.status, background=after)
    else:
        response = StreamingResponse(reply.stream, reply.status)
    response.raw_headers = reply.headers
    return response


def proxy_endpoint(endpoint: Endpoint):  # type: ignore[no-untyped-def]
    async def handler(request: Request) -> Response:
        raw = await request.body()
        reply = await proxy_of(request).handle(
            endpoint, raw, request.headers.get("authorization"), request.state.request_id
        )
        return await to_response(reply)

    handler.__name__ = f"openai_{endpoint.name.lower()}"
    return handler


async def traced_json(
    request: Request, route: str, answer: Callable[[RequestTrace | None], Awaitable[bytes]]
) -> Response:
    """A JSON answer of a route outside the proxy (a stored response, a token count), in a
    trace of its own when tracing is on: the SERVER span ``{method} {route}`` and the steps
    ``answer`` adds (authentication, the store); a refusal is told by its status and code."""
    tracing = proxy_of(request).tracing
    trace = None
    if tracing.enabled:
        trace = tracing.start(
            request.method,
            request.url.path,
            request.scope["headers"],
            request.state.request_id,
            route=route,
        )
    try:
        body = await answer(trace)
    except ApiError as exc:
        if trace is not None:
            trace.finish(exc.status, exc.code or exc.type, {})
        raise
    except UNAVAILABLE:  # the database away: answered 503 by the app's handler
        if trace is not None:
            trace.finish(503, "service_unavailable", {})
        raise
    except asyncio.CancelledError:  # the client left: told as the proxy tells it
        if trace is not None:
            trace.finish(499, "client_disconnected", {})
        raise
    except BaseException:
        if trace is not None:
            trace.finish(500, "internal_error", {})
        raise
    if trace is not None:
        trace.finish(200, None, {})
    return Response(body, media_type="application/json")
