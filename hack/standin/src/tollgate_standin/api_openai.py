"""Ollama's OpenAI-compatible ``/v1`` endpoints, translated onto the native handlers' logic."""

from __future__ import annotations

import base64
import random
import struct
import time
from typing import Any

from aiohttp import web

from . import gojson
from .generation import Failure, GenRequest, Metrics, serve_generation
from .inference import (
    chat_request,
    embed_inputs,
    embed_texts,
    generate_request,
    not_found_try_pulling,
    resolve,
)
from .names import parse_name
from .scheduler import ServerBusy
from .state import STATE
from .textgen import Plan, ToolCall
from .wire import (
    SSE_CT,
    BadRequest,
    dumps,
    field_error,
    get_bool,
    get_dict,
    get_list,
    get_str,
    json_response,
    read_json_object,
)

FINGERPRINT = "fp_ollama"
DONE = b"data: [DONE]\n\n"
CHAT_REQ = "openai.ChatCompletionRequest"
COMPLETION_REQ = "openai.CompletionRequest"
_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error"}


def openai_error(status: int, message: str, middleware: bool = False) -> web.Response:
    """Ollama's ``openai.NewError``: all four keys, ``param`` and ``code`` null.

    ``middleware``: the ``/v1`` middleware itself refused the request (undecodable
    body, bad messages): Gin's JSON, with a charset and no final newline. Errors from
    the native handler behind it go out through the middleware's writer instead.
    """
    kind = _ERROR_TYPES.get(status, "api_error")
    error = {"message": message, "type": kind, "param": None, "code": None}
    if middleware:
        return json_response({"error": error}, status=status)
    return v1_json({"error": error}, status=status)


def v1_json(obj: Any, status: int = 200) -> web.Response:
    """What the ``/v1`` middleware's writers send: ``json.Encoder`` output, newline-terminated."""
    return json_response(obj, status=status, content_type="application/json", newline=True)


def _usage(plan: Plan) -> dict[str, int]:
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": plan.eval_count,
        "total_tokens": plan.prompt_tokens + plan.eval_count,
    }


def _sse(obj: Any) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def openai_tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [
        {
            "id": c.id,
            "index": c.index,
            "type": "function",
            "function": {"name": c.name, "arguments": dumps(c.arguments).decode()},
        }
        for c in calls
    ]


class ChatSse:
    """``chat.completion.chunk`` events; role only in the first, ``delta: {}`` to finish.

    With ``role_every_chunk`` (Ollama before 0.32.6) every delta is
    ``{"role": "assistant", "content": ...}`` and the finish chunk's content is ``""``.
    """

    content_type = SSE_CT

    def __init__(self, model: str, include_usage: bool, role_every_chunk: bool = False) -> None:
        self.model = model
        self.include_usage = include_usage
        self.role_every_chunk = role_every_chunk
        self.id = f"chatcmpl-{random.randrange(999)}"  # noqa: S311 - Ollama's ids are not unique either
        self.created = int(time.time())

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def _delta(self, first: bool, content: str | None, **extra: Any) -> dict[str, Any]:
        if self.role_every_chunk:
            return {"role": "assistant", "content": content or "", **extra}
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if content is not None:
            delta["content"] = content
        return {**delta, **extra}

    def piece(self, text: str, first: bool) -> bytes:
        return _sse(self._chunk(self._delta(first, text), None))

    def tool_calls(self, calls: list[ToolCall], first: bool) -> bytes:
        delta = self._delta(first, None, tool_calls=openai_tool_calls(calls))
        return _sse(self._chunk(delta, None))

    def done(self, plan: Plan, metrics: Metrics, first: bool) -> bytes:
        finish = "tool_calls" if plan.tool_calls else plan.done_reason
        out = _sse(self._chunk(self._delta(first, None), finish))
        if self.include_usage:
            usage_chunk = {**self._chunk({}, None), "choices": [], "usage": _usage(plan)}
            out += _sse(usage_chunk)
        return out + DONE

    def midstream_error(self, message: str, first: bool) -> bytes:
        # Ollama decodes its own {"error": ...} line as an empty chat response: the error
        # text is lost, an empty chunk goes out and the stream ends without [DONE].
        return _sse({**self._chunk(self._delta(first, ""), None), "model": ""})

    def whole(self, plan: Plan, metrics: Metrics) -> web.Response:
        message: dict[str, Any] = {"role": "assistant", "content": plan.text}
        if plan.tool_calls:
            message["tool_calls"] = openai_tool_calls(plan.tool_calls)
        finish = "tool_calls" if plan.tool_calls else plan.done_reason
        body = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": _usage(plan),
        }
        return v1_json(body)

    def idle(self, reason: str) -> web.Response:
        return self.whole(Plan([], reason, 0, 0), _ZERO)

    def failure(self, status: int, message: str) -> web.Response:
        return openai_error(status, message)


class CompletionSse(ChatSse):
    """``text_completion`` events; with ``include_usage`` every chunk carries zero usage."""

    def __init__(self, model: str, include_usage: bool) -> None:
        super().__init__(model, include_usage, role_every_chunk=False)
        self.id = f"cmpl-{random.randrange(999)}"  # noqa: S311

    def _text(self, text: str, finish: str | None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "choices": [{"text": text, "index": 0, "finish_reason": finish}],
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
        }
        if self.include_usage:
            chunk["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return chunk

    def piece(self, text: str, first: bool) -> bytes:
        return _sse(self._text(text, None))

    def tool_calls(self, calls: list[ToolCall], first: bool) -> bytes:
        return _sse(self._text("", None))

    def done(self, plan: Plan, metrics: Metrics, first: bool) -> bytes:
        last = self._text("", plan.done_reason)
        out = _sse(last)
        if self.include_usage:
            out += _sse({**last, "choices": [], "usage": _usage(plan)})
        return out + DONE

    def midstream_error(self, message: str, first: bool) -> bytes:
        return _sse({**self._text("", None), "model": ""})

    def whole(self, plan: Plan, metrics: Metrics) -> web.Response:
        body = {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"text": plan.text, "index": 0, "finish_reason": plan.done_reason}],
            "usage": _usage(plan),
        }
        return v1_json(body)


_ZERO = Metrics(1, 1, 0, 1, 0, 1)


def _include_usage(body: dict[str, Any], struct_name: str) -> bool:
    options = get_dict(body, "stream_options", struct_name)
    return options.get("include_usage") is True


def _options(body: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
        options["num_predict"] = max_tokens
    stop = body.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        options["stop"] = [s for s in stop if isinstance(s, str)]
    return options


def _format(body: dict[str, Any]) -> Any:
    response_format = body.get("response_format")
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_object":
        return "json"
    schema = response_format.get("json_schema")
    if response_format.get("type") == "json_schema" and isinstance(schema, dict):
        return schema.get("schema")
    return None


def _native_messages(messages: list[Any]) -> list[dict[str, str]]:
    """OpenAI messages to Ollama ones; content parts become one message each."""
    native: list[dict[str, str]] = []
    for message in messages:
        if not isinstance(message, dict):
            raise field_error(CHAT_REQ, "messages", "openai.Message", message)
        role = get_str(message, "role", "openai.Message")
        native.extend({"role": role, "content": text} for text in _contents(message))
    return native


def _contents(message: dict[str, Any]) -> list[str]:
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [_part_text(part) for part in content]
    if message.get("tool_calls") is not None:
        return [""]
    raise BadRequest(f"invalid message content type: {'<nil>' if content is None else 'object'}")


def _part_text(part: Any) -> str:
    if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
        raise BadRequest("invalid message format")
    if part["type"] == "image_url":
        return ""
    text = part.get("text")
    if not isinstance(text, str):
        raise BadRequest("invalid message format")
    return text


async def _serve(
    request: web.Request, gen: GenRequest | Failure, encoder: ChatSse
) -> web.StreamResponse:
    if isinstance(gen, Failure):
        return openai_error(gen.status, gen.message)
    return await serve_generation(request, gen, encoder)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    try:
        body = await read_json_object(request, gojson.CHAT_COMPLETION, "EOF")
        messages = get_list(body, "messages", CHAT_REQ, "[]openai.Message")
        if not messages:
            return openai_error(400, "[] is too short - 'messages'", middleware=True)
        native = {
            "model": get_str(body, "model", CHAT_REQ),
            "messages": _native_messages(messages),
            "tools": get_list(body, "tools", CHAT_REQ, "[]api.Tool"),
            "options": _options(body),
            "format": _format(body),
            "stream": get_bool(body, "stream", CHAT_REQ) is True,
        }
        include_usage = _include_usage(body, CHAT_REQ)
        gen = chat_request(request.app[STATE], native)
    except BadRequest as exc:
        return openai_error(400, str(exc), middleware=True)
    model = native["model"]
    legacy = request.app[STATE].config.v1_role_every_chunk
    return await _serve(request, gen, ChatSse(str(model), include_usage, legacy))


async def completions(request: web.Request) -> web.StreamResponse:
    try:
        body = await read_json_object(request, gojson.COMPLETION, "EOF")
        native = {
            "model": get_str(body, "model", COMPLETION_REQ),
            "prompt": get_str(body, "prompt", COMPLETION_REQ),
            "options": _options(body),
            "stream": get_bool(body, "stream", COMPLETION_REQ) is True,
        }
        include_usage = _include_usage(body, COMPLETION_REQ)
        gen = generate_request(request.app[STATE], native)
    except BadRequest as exc:
        return openai_error(400, str(exc), middleware=True)
    model = native["model"]
    return await _serve(request, gen, CompletionSse(str(model), include_usage))


def _embedding_value(vector: list[float], encoding: str) -> Any:
    if encoding.lower() != "base64":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _embedding_inputs(body: dict[str, Any]) -> list[str]:
    value = body.get("input")
    if value == "":
        value = [""]
    if value is None or value == []:
        raise BadRequest("invalid input")
    return embed_inputs(value)


async def embeddings(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        body = await read_json_object(request, gojson.OPENAI_EMBED, "EOF")
        encoding = get_str(body, "encoding_format", "openai.EmbedRequest")
        if encoding and encoding.lower() not in ("float", "base64"):
            message = (
                f"Invalid value for 'encoding_format' = {encoding}. "
                "Supported values: ['float', 'base64']."
            )
            return openai_error(400, message, middleware=True)
        texts = _embedding_inputs(body)
        model = get_str(body, "model", "openai.EmbedRequest")
        dimensions = body.get("dimensions")
    except BadRequest as exc:
        return openai_error(400, str(exc), middleware=True)
    found = resolve(state, model, Failure(404, f"model '{model}' not found"))
    if isinstance(found, Failure) and found.status == 404 and model:
        found = Failure(404, not_found_try_pulling(model))
    if isinstance(found, Failure):
        return openai_error(found.status, found.message)
    dims = dimensions if isinstance(dimensions, int) and not isinstance(dimensions, bool) else None
    try:
        result = await embed_texts(state, found, texts, state.default_keep_alive, dims)
    except ServerBusy as busy:
        return openai_error(503, str(busy))
    data = [
        {"object": "embedding", "embedding": _embedding_value(v, encoding), "index": i}
        for i, v in enumerate(result.vectors)
    ]
    usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
    body_out = {"object": "list", "data": data, "model": model, "usage": usage}
    return v1_json(body_out)


def _model_object(model: str, created: int) -> dict[str, Any]:
    name = parse_name(model)
    owner = name.namespace if name is not None else ""
    return {"id": model, "object": "model", "created": created, "owned_by": owner}


async def list_models(request: web.Request) -> web.Response:
    records = request.app[STATE].store.newest_first()
    data = [_model_object(r.display, int(r.modified_at.timestamp())) for r in records]
    body = {"object": "list", "data": data or None}
    return v1_json(body)


async def retrieve_model(request: web.Request) -> web.Response:
    model = request.match_info["model"]
    found = resolve(request.app[STATE], model, Failure(400, "model is required"))
    if isinstance(found, Failure):
        return openai_error(found.status, found.message)
    created = int(found.modified_at.timestamp())
    return v1_json(_model_object(model, created))
