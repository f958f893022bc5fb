"""Ollama's native API behind the same keys, limits and usage as the OpenAI API.

Errors here are Ollama-shaped (``{"error": "…"}``) so Ollama clients show them.
Model management (pull, push, create, copy, delete) belongs to the platform team
(ModelAlias resources) and is refused with 403.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import orjson
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from tollgate_gateway import __version__
from tollgate_gateway.chat.schemas import Endpoint
from tollgate_gateway.errors import ApiError
from tollgate_gateway.routes import proxy_endpoint, proxy_of


async def tags(request: Request) -> Response:
    proxy = proxy_of(request)
    key = await proxy.authenticate(request.headers.get("authorization"))
    models = []
    for a in await proxy.catalog.all():
        if not (a.enabled and key.may_use(a.alias)):
            continue
        models.append(
            {
                "name": a.alias,
                "model": a.alias,
                "modified_at": datetime.fromtimestamp(a.created, UTC).isoformat(),
                "size": 0,
                "digest": hashlib.sha256(a.backend_tag.encode()).hexdigest(),
                "details": {
                    "parent_model": "",
                    "format": "gguf",
                    "family": "",
                    "families": None,
                    "parameter_size": "",
                    "quantization_level": "",
                },
            }
        )
    return Response(orjson.dumps({"models": models}), media_type="application/json")


async def version(request: Request) -> Response:
    await proxy_of(request).authenticate(request.headers.get("authorization"))
    return Response(orjson.dumps({"version": __version__}), media_type="application/json")


async def running(request: Request) -> Response:
    await proxy_of(request).authenticate(request.headers.get("authorization"))
    return Response(b'{"models":[]}', media_type="application/json")


async def managed(request: Request) -> Response:
    await proxy_of(request).authenticate(request.headers.get("authorization"))
    raise ApiError(
        403,
        "Models are managed by the platform team through ModelAlias resources; "
        "this gateway does not pull, push, create, copy or delete models.",
        code="forbidden",
    )


async def root(request: Request) -> Response:
    return PlainTextResponse("Ollama is running (Tollgate gateway)")


PROXY_ROUTES: dict[str, Endpoint] = {
    "/api/chat": Endpoint.OLLAMA_CHAT,
    "/api/generate": Endpoint.OLLAMA_GENERATE,
    "/api/embed": Endpoint.OLLAMA_EMBED,
    "/api/embeddings": Endpoint.OLLAMA_EMBEDDINGS,
    "/api/show": Endpoint.OLLAMA_SHOW,
}

routes: list[BaseRoute] = [
    Route("/", root, methods=["GET", "HEAD"]),
    *(Route(path, proxy_endpoint(ep), methods=["POST"]) for path, ep in PROXY_ROUTES.items()),
    Route("/api/tags", tags, methods=["GET"]),
    Route("/api/ps", running, methods=["GET"]),
    Route("/api/version", version, methods=["GET"]),
    *(
        Route(f"/api/{name}", managed, methods=["POST", "DELETE"])
        for name in ("pull", "push", "create", "copy", "delete")
    ),
]
