"""Anthropic Messages API routes. Errors here are written in Anthropic's shape
(`errors.error_body` picks it by path); ``anthropic-version`` is accepted, whatever it says.
Once the services are up, ``POST /v1/messages`` is served by `middleware.serve_proxy` before
routing (`main.fast_routes`); its route here stands in until then."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tollgate_gateway.messages.service import MessagesService
from tollgate_gateway.routes import to_response, traced_json


def _service(request: Request) -> MessagesService:
    service: MessagesService = request.app.state.services.messages
    return service


async def create_message(request: Request) -> Response:
    raw = await request.body()
    reply = await _service(request).create(
        raw,
        request.headers.get("authorization"),
        request.headers.get("x-api-key"),
        request.state.request_id,
    )
    return await to_response(reply)


async def count_tokens(request: Request) -> Response:
    raw = await request.body()
    service, headers = _service(request), request.headers
    return await traced_json(
        request,
        "/v1/messages/count_tokens",
        lambda trace: service.count_tokens(
            raw, headers.get("x-api-key"), headers.get("authorization"), trace
        ),
    )


routes: list[BaseRoute] = [
    Route("/v1/messages", create_message, methods=["POST"]),
    Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
]
