"""OpenAI API routes. Plain Starlette routes, in the README rather than in /docs.

The proxy routes (`PROXY_ROUTES`) are served by `middleware.serve_proxy` before routing
(see `main.GatewayApp`); their routes here answer what routing alone decides (405 for
another method) and stand in should a request ever reach them."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tollgate_gateway.chat.schemas import Endpoint
from tollgate_gateway.messages import models
from tollgate_gateway.routes import proxy_endpoint, proxy_of

PROXY_ROUTES: dict[str, Endpoint] = {
    "/v1/chat/completions": Endpoint.CHAT,
    "/v1/completions": Endpoint.COMPLETIONS,
    "/v1/embeddings": Endpoint.EMBEDDINGS,
}


async def list_models(request: Request) -> Response:
    proxy = proxy_of(request)
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
    proxy = proxy_of(request)
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
    *(Route(path, proxy_endpoint(ep), methods=["POST"]) for path, ep in PROXY_ROUTES.items()),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
]
