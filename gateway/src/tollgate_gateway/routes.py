"""Route helpers every API's routes share: the proxy service of a request, a `Reply` as a
Starlette response, a proxy endpoint as a route handler."""

from __future__ import annotations

import asyncio

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tollgate_gateway.chat.schemas import Endpoint
from tollgate_gateway.chat.service import ProxyService, Reply


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
