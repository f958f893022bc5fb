"""Native inference endpoints: ``/api/chat``, ``/api/generate``, ``/api/embed(dings)``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import gojson
from .generation import Encoder, Failure, GenRequest, Metrics, serve_generation
from .inference import (
    chat_request,
    embed_inputs,
    embed_texts,
    generate_request,
    not_found_try_pulling,
    resolve,
)
from .scheduler import ServerBusy
from .state import STATE
from .textgen import Plan, ToolCall
from .wire import (
    NDJSON_CT,
    BadRequest,
    dumps,
    error_response,
    field_error,
    get_str,
    json_response,
    parse_keep_alive,
    read_json_object,
    timestamp,
)


def native_tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "function": {"index": c.index, "name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


class ChatNdjson:
    """``/api/chat`` chunks: ``message`` objects, then a ``done`` chunk with metrics."""

    content_type = NDJSON_CT

    def __init__(self, model: str) -> None:
        self.model = model

    def _line(self, message: dict[str, Any], done: bool = False, **extra: Any) -> bytes:
        head = {"model": self.model, "created_at": timestamp(), "message": message}
        return dumps({**head, "done": done, **extra}) + b"\n"

    def piece(self, text: str, first: bool) -> bytes:
        return self._line({"role": "assistant", "content": text})

    def tool_calls(self, calls: list[ToolCall], first: bool) -> bytes:
        message = {"role": "assistant", "content": "", "tool_calls": native_tool_calls(calls)}
        return self._line(message)

    def done(self, plan: Plan, metrics: Metrics, first: bool) -> bytes:
        message = {"role": "assistant", "content": ""}
        return self._line(message, True, done_reason=plan.done_reason, **metrics.as_dict())

    def midstream_error(self, message: str, first: bool) -> bytes:
        return dumps({"error": message}) + b"\n"

    def whole(self, plan: Plan, metrics: Metrics) -> web.Response:
        message: dict[str, Any] = {"role": "assistant", "content": plan.text}
        if plan.tool_calls:
            message["tool_calls"] = native_tool_calls(plan.tool_calls)
        body = {
            "model": self.model,
            "created_at": timestamp(),
            "message": message,
            "done": True,
            "done_reason": plan.done_reason,
            **metrics.as_dict(),
        }
        return json_response(body)

    def idle(self, reason: str) -> web.Response:
        message = {"role": "assistant", "content": ""}
        body = {"model": self.model, "created_at": timestamp(), "message": message}
        return json_response({**body, "done": True, "done_reason": reason})

    def failure(self, status: int, message: str) -> web.Response:
        return error_response(status, message)


class GenerateNdjson(ChatNdjson):
    """``/api/generate`` chunks: ``response`` strings; the last one carries ``context``."""

    def _text(self, text: str, done: bool = False, **extra: Any) -> bytes:
        head = {"model": self.model, "created_at": timestamp(), "response": text}
        return dumps({**head, "done": done, **extra}) + b"\n"

    def piece(self, text: str, first: bool) -> bytes:
        return self._text(text)

    def tool_calls(self, calls: list[ToolCall], first: bool) -> bytes:
        return self._text("")

    def done(self, plan: Plan, metrics: Metrics, first: bool) -> bytes:
        extra = {"done_reason": plan.done_reason, "context": _context(plan)}
        return self._text("", True, **extra, **metrics.as_dict())

    def whole(self, plan: Plan, metrics: Metrics) -> web.Response:
        body = {
            "model": self.model,
            "created_at": timestamp(),
            "response": plan.text,
            "done": True,
            "done_reason": plan.done_reason,
            "context": _context(plan),
            **metrics.as_dict(),
        }
        return json_response(body)

    def idle(self, reason: str) -> web.Response:
        body = {"model": self.model, "created_at": timestamp(), "response": ""}
        return json_response({**body, "done": True, "done_reason": reason})


def _context(plan: Plan) -> list[int]:
    """Stand-in for Ollama's deprecated token context: just token positions."""
    return list(range(1, plan.prompt_tokens + plan.eval_count + 1))


async def run_generation(
    request: web.Request, gen: GenRequest | Failure, encoder_for: type[ChatNdjson]
) -> web.StreamResponse:
    if isinstance(gen, Failure):
        return error_response(gen.status, gen.message)
    encoder: Encoder = encoder_for(gen.model)
    if gen.idle == "unload":
        request.app[STATE].unload(gen.record.key)
        return encoder.idle("unload")
    return await serve_generation(request, gen, encoder)


async def chat(request: web.Request) -> web.StreamResponse:
    try:
        body = await read_json_object(request, gojson.CHAT)
        gen = chat_request(request.app[STATE], body)
    except BadRequest as exc:
        return error_response(400, str(exc))
    return await run_generation(request, gen, ChatNdjson)


async def generate(request: web.Request) -> web.StreamResponse:
    try:
        body = await read_json_object(request, gojson.GENERATE)
        gen = generate_request(request.app[STATE], body)
    except BadRequest as exc:
        return error_response(400, str(exc))
    return await run_generation(request, gen, GenerateNdjson)


async def embed(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        body = await read_json_object(request, gojson.EMBED)
        model = get_str(body, "model", "api.EmbedRequest")
        keep_alive = parse_keep_alive(body.get("keep_alive"), state.default_keep_alive)
        dimensions = _dimensions(body.get("dimensions"))
        found = resolve(state, model, Failure(404, f"model '{model}' not found"))
        texts = embed_inputs(body.get("input"))
        if isinstance(found, Failure) and found.status == 404 and model:
            found = Failure(404, not_found_try_pulling(model))
    except BadRequest as exc:
        return error_response(400, str(exc))
    if isinstance(found, Failure):
        return error_response(found.status, found.message)
    try:
        options = body.get("options")
        result = await embed_texts(state, found, texts, keep_alive, dimensions, options)
    except ServerBusy as busy:
        return error_response(503, str(busy))
    if not texts:
        return json_response({"model": model, "embeddings": []})
    return json_response(
        {
            "model": model,
            "embeddings": result.vectors,
            "total_duration": result.total_duration,
            "load_duration": result.load_duration,
            "prompt_eval_count": result.prompt_tokens,
        }
    )


async def embeddings(request: web.Request) -> web.StreamResponse:
    """The legacy endpoint: one ``prompt``, one ``embedding``."""
    state = request.app[STATE]
    try:
        body = await read_json_object(request, gojson.EMBEDDING)
        model = get_str(body, "model", "api.EmbeddingRequest")
        prompt = get_str(body, "prompt", "api.EmbeddingRequest")
        keep_alive = parse_keep_alive(body.get("keep_alive"), state.default_keep_alive)
    except BadRequest as exc:
        return error_response(400, str(exc))
    found = resolve(state, model, Failure(400, "model is required"))
    if isinstance(found, Failure) and found.status == 404:
        found = Failure(404, not_found_try_pulling(model))
    if isinstance(found, Failure):
        return error_response(found.status, found.message)
    try:
        result = await embed_texts(state, found, [prompt] if prompt else [], keep_alive, None)
    except ServerBusy as busy:
        return error_response(503, str(busy))
    return json_response({"embedding": result.vectors[0] if prompt else []})


def _dimensions(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise field_error("api.EmbedRequest", "dimensions", "int", value)
    return value
