"""Responses API routes (OpenAI's shapes and errors). Once the services are up,
``POST /v1/responses`` is served by `middleware.serve_proxy` before routing
(`main.fast_routes`); its route here stands in until then."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tollgate_gateway.responses.service import ResponsesService
from tollgate_gateway.routes import to_response, traced_json


def _service(request: Request) -> ResponsesService:
    service: ResponsesService = request.app.state.services.responses
    return service


async def create_response(request: Request) -> Response:
    raw = await request.body()
    reply = await _service(request).create(
        raw, request.headers.get("authorization"), None, request.state.request_id
    )
    return await to_response(reply)


async def retrieve_response(request: Request) -> Response:
    service, response_id = _service(request), request.path_params["response_id"]
    authorization = request.headers.get("authorization")
    return await traced_json(
        request,
        "/v1/responses/{response_id}",
        lambda trace: service.retrieve(response_id, authorization, trace),
    )


async def delete_response(request: Request) -> Response:
    service, response_id = _service(request), request.path_params["response_id"]
    authorization = request.headers.get("authorization")
    return await traced_json(
        request,
        "/v1/responses/{response_id}",
        lambda trace: service.delete(response_id, authorization, trace),
    )


async def list_input_items(request: Request) -> Response:
    service, response_id = _service(request), request.path_params["response_id"]
    authorization = request.headers.get("authorization")
    return await traced_json(
        request,
        "/v1/responses/{response_id}/input_items",
        lambda trace: service.input_items(response_id, authorization, trace),
    )


routes: list[BaseRoute] = [
    Route("/v1/responses", create_response, methods=["POST"]),
    Route("/v1/responses/{response_id}", retrieve_response, methods=["GET"]),
    Route("/v1/responses/{response_id}", delete_response, methods=["DELETE"]),
    Route("/v1/responses/{response_id}/input_items", list_input_items, methods=["GET"]),
]
