"""OpenAI API routes. Plain Starlette routes: the hot path skips FastAPI's dependency
resolution, measurably cheaper per request; they appear in the README, not in /docs."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tollgate_gateway.chat.schemas import Endpoint
from tollgate_gateway.chat.service import ProxyService


def _proxy(request: Request) -> ProxyService:
    proxy: ProxyService = request.app.state.services.proxy
    return proxy


def _endpoint(endpoint: Endpoint):  # type: ignore[no-untyped-def]
    async def handler(request: Request) -> Response:
        raw = await request.body()
        return await _proxy(request).handle(
            endpoint, raw, request.headers.get("authorization"), request.state.request_id
        )

    handler.__name__ = f"openai_{endpoint.name.lower()}"
    return handler


async def list_models(request: Request) -> Response:
    proxy = _proxy(request)
    key = await proxy.authenticate(request.headers.get("authorization"))
    data = [
        {"id": a.alias, "object": "model", "created": a.created, "owned_by": "tollgate"}
        for a in await proxy.catalog.all()
        if a.enabled and key.may_use(a.alias)
    ]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


async def get_model(request: Request) -> Response:
    proxy = _proxy(request)
    key = await proxy.authenticate(request.headers.get("authorization"))
    name = request.path_params["model"]
    alias = await proxy.resolve(key, name)
    body = {"id": alias.alias, "object": "model", "created": alias.created, "owned_by": "tollgate"}
    return Response(orjson.dumps(body), media_type="application/json")


routes: list[BaseRoute] = [
    Route("/v1/chat/completions", _endpoint(Endpoint.CHAT), methods=["POST"]),
    Route("/v1/completions", _endpoint(Endpoint.COMPLETIONS), methods=["POST"]),
    Route("/v1/embeddings", _endpoint(Endpoint.EMBEDDINGS), methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
]
