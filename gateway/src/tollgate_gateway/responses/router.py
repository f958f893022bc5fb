"""Responses API routes (OpenAI's shapes and errors). Once the services are up,
``POST /v1/responses`` is served by `middleware.serve_proxy` before routing
(`main.fast_routes`); its route here stands in until then."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tollgate_gateway.responses.service import ResponsesService
from tollgate_gateway.routes import to_response, traced_json
from tollgate_gateway.tracing import RequestTrace


def _service(request: Request) -> ResponsesService:
    service: ResponsesService = request.app.state.services.responses
    return service


async def create_response(request: Request) -> Response:
    raw = await request.body()
    reply = await _service(request).create(
        raw, request.headers.get("authorization"), None, request.state.request_id
    )
    return await to_response(reply)


StoredAnswer = Callable[[ResponsesService, str, str | None, RequestTrace | None], Awaitable[bytes]]


def _stored(
    name: str, route: str, answer: StoredAnswer
) -> Callable[[Request], Awaitable[Response]]:
    """The handler of a route about one stored response: its answer, traced as ``route``."""

    async def handler(request: Request) -> Response:
        service, response_id = _service(request), request.path_params["response_id"]
        authorization = request.headers.get("authorization")
        return await traced_json(
            request, route, lambda trace: answer(service, response_id, authorization, trace)
        )

    handler.__name__ = handler.__qualname__ = name
    return handler


retrieve_response = _stored(
    "retrieve_response", "/v1/responses/{response_id}", ResponsesService.retrieve
)
delete_response = _stored("delete_response", "/v1/responses/{response_id}", ResponsesService.delete)
list_input_items = _stored(
    "list_input_items", "/v1/responses/{response_id}/input_items", ResponsesService.input_items
)


routes: list[BaseRoute] = [
    Route("/v1/responses", create_response, methods=["POST"]),
    Route("/v1/responses/{response_id}", retrieve_response, methods=["GET"]),
    Route("/v1/responses/{response_id}", delete_response, methods=["DELETE"]),
    Route("/v1/responses/{response_id}/input_items", list_input_items, methods=["GET"]),
]
