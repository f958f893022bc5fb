"""OpenAI API routes. Plain Starlette routes, in the README rather than in /docs.

The proxy routes (`PROXY_ROUTES`) are served by `middleware.serve_proxy` before routing
(see `main.GatewayApp`); their routes here answer what routing alone decides (405 for
another method) and stand in should a request ever reach them."""

from __future__ import annotations

import asyncio

import orjson
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from tollgate_gateway.chat.schemas import Endpoint
from tollgate_gateway.chat.service import ProxyService, Reply
from tollgate_gateway.messages import models

PROXY_ROUTES: dict[str, Endpoint] = {
    "/v1/chat/completions": Endpoint.CHAT,
    "/v1/completions": Endpoint.COMPLETIONS,
    "/v1/embeddings": Endpoint.EMBEDDINGS,
}


def _proxy(request: Request) -> ProxyService:
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


def _endpoint(endpoint: Endpoint):  # type: ignore[no-untyped-def]
    async def handler(request: Request) -> Response:
        raw = await request.body()
        reply = await _proxy(request).handle(
            endpoint, raw, request.headers.get("authorization"), request.state.request_id
        )
        return await to_response(reply)

    handler.__name__ = f"openai_{endpoint.name.lower()}"
    return handler


async def list_models(request: Request) -> Response:
    proxy = _proxy(request)
    anthropic = models.wants_anthropic(request)
    if anthropic:
        key = await models.anthropic_key(proxy, request)
    else:
        key = await proxy.authenticate(request.headers.get("authorization"))
    aliases = [a for a in await proxy.catalog.all() if a.enabled and key.may_use(a.alias)]
    if anthropic:
        return Response(orjson.dumps(models.model_list(aliases)), media_type="application/json")
    data = [
        {"id": a.alias, "object": "model", "created": a.created, "owned_by": "tollgate"}
        for a in aliases
    ]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


async def get_model(request: Request) -> Response:
    proxy = _proxy(request)
    anthropic = models.wants_anthropic(request)
    if anthropic:
        key = await models.anthropic_key(proxy, request)
    else:
        key = await proxy.authenticate(request.headers.get("authorization"))
    name = request.path_params["model"]
    alias = await proxy.resolve(key, name)
    if anthropic:
        return Response(orjson.dumps(models.model_info(alias)), media_type="application/json")
    body = {"id": alias.alias, "object": "model", "created": alias.created, "owned_by": "tollgate"}
    return Response(orjson.dumps(body), media_type="application/json")


routes: list[BaseRoute] = [
    *(Route(path, _endpoint(ep), methods=["POST"]) for path, ep in PROXY_ROUTES.items()),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
]
