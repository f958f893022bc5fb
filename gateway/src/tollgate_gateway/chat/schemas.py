"""Request checks for the hot path: fast, explicit, and naming the offending `param`.

Bodies are passed through to Ollama (tools, response_format, options …), so only
what Tollgate relies on or what Ollama would mishandle is checked here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from tollgate_gateway.errors import ApiError, bad_request


class Endpoint(StrEnum):
    CHAT = "chat.completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    OLLAMA_CHAT = "api.chat"
    OLLAMA_GENERATE = "api.generate"
    OLLAMA_EMBED = "api.embed"
    OLLAMA_EMBEDDINGS = "api.embeddings"
    OLLAMA_SHOW = "api.show"
    RESPONSES = "responses"  # served by the responses package
    MESSAGES = "messages"  # served by the messages package


NATIVE = {
    Endpoint.OLLAMA_CHAT,
    Endpoint.OLLAMA_GENERATE,
    Endpoint.OLLAMA_EMBED,
    Endpoint.OLLAMA_EMBEDDINGS,
    Endpoint.OLLAMA_SHOW,
}
STREAMS_BY_DEFAULT = {Endpoint.OLLAMA_CHAT, Endpoint.OLLAMA_GENERATE}


@dataclass(slots=True)
class Parsed:
    body: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None
    clamped: list[str] | None = None  # what the alias's request policy lowered or dropped


# JSON nested deeper than this is refused (orjson cannot write more than 254 levels back,
# and no API request needs more than a few dozen).
MAX_DEPTH = 128
# Counts Ollama reads as 32-bit integers; larger values are refused rather than wrapped.
MAX_INT = 2**31 - 1


def _too_deep(body: Any) -> bool:
    level: list[Any] = [body]
    for _ in range(MAX_DEPTH):
        below: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                below.extend(v for v in item.values() if isinstance(v, dict | list))
            elif isinstance(item, list):
                below.extend(v for v in item if isinstance(v, dict | list))
        if not below:
            return False
        level = below
    return True


def parse_json(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise bad_request("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(
            400, f"We could not parse the JSON body of your request: {exc}.", code="invalid_json"
        ) from exc
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    # Only a body with that many brackets can be that deep: the count is cheap, the walk is not.
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _too_deep(body):
        raise ApiError(
            400,
            f"The JSON body is nested deeper than {MAX_DEPTH} levels.",
            code="invalid_json",
        )
    return body


def _type_error(param: str, expected: str, value: Any) -> ApiError:
    return bad_request(
        f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)}.",
        param=param,
        code="invalid_type",
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _opt_bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _type_error(name, "a boolean", value)
    return value


def _opt_int(body: dict[str, Any], name: str, minimum: int = 1) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = body[name] = int(value)  # 100.0 is an integer in JSON (and to Ollama)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(name, "an integer", value)
    if value < minimum:
        raise bad_request(f"'{name}' must be at least {minimum}.", param=name, code="invalid_value")
    if value > MAX_INT:
        raise bad_request(f"'{name}' must be at most {MAX_INT}.", param=name, code="invalid_value")
    return value


def _opt_number(body: dict[str, Any], name: str, lo: float, hi: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _type_error(name, "a number", value)
    if not lo <= value <= hi:
        raise bad_request(
            f"'{name}' must be between {lo} and {hi}.", param=name, code="invalid_value"
        )


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise bad_request(
            "you must provide a model parameter", param="model", code="missing_required_parameter"
        )
    if not isinstance(model, str):
        raise _type_error("model", "a string", model)
    if not model:
        raise bad_request("'model' must not be empty.", param="model", code="invalid_value")
    return model


def _messages(body: dict[str, Any], required: bool) -> None:
    messages = body.get("messages")
    if messages is None and not required:
        return
    if messages is None:
        raise bad_request(
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(messages, list):
        raise _type_error("messages", "an array", messages)
    if required and not messages:
        raise bad_request(
            "'messages' must contain at least one message.", param="messages", code="invalid_value"
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _type_error(f"messages[{i}]", "an object", message)
        role = message.get("role")
        if not isinstance(role, str):
            raise _type_error(f"messages[{i}].role", "a string", role)


def _texts(body: dict[str, Any], name: str, required: bool) -> None:
    value = body.get(name)
    if value is None:
        if required:
            raise bad_request(
                f"Missing required parameter: '{name}'.",
                param=name,
                code="missing_required_parameter",
            )
        return
    if isinstance(value, str):
        return
    if isinstance(value, list) and value:
        for i, item in enumerate(value):
            if not isinstance(item, str | int | list):
                raise _type_error(f"{name}[{i}]", "a string", item)
        return
    if isinstance(value, list):
        raise bad_request(f"'{name}' must not be empty.", param=name, code="invalid_value")
    raise _type_error(name, "a string or an array of strings", value)


def parse(endpoint: Endpoint, body: dict[str, Any]) -> Parsed:
    """Check a request body for an endpoint; raises 400 ApiErrors naming the param."""
    model = _model(body)
    stream = _opt_bool(body, "stream", endpoint in STREAMS_BY_DEFAULT)
    include_usage = False
    max_tokens: int | None = None
    if endpoint in (Endpoint.CHAT, Endpoint.COMPLETIONS):
        if endpoint is Endpoint.CHAT:
            _messages(body, required=True)
            max_tokens = _opt_int(body, "max_completion_tokens")
        else:
            _texts(body, "prompt", required=True)
        max_tokens = _opt_int(body, "max_tokens") or max_tokens
        _opt_number(body, "temperature", 0, 2)
        _opt_number(body, "top_p", 0, 1)
        n = _opt_int(body, "n")
        if n is not None and n != 1:
            raise bad_request(
                "Only n=1 is supported by this server.", param="n", code="unsupported_value"
            )
        options = body.get("stream_options")
        if options is not None:
            if not isinstance(options, dict):
                raise _type_error("stream_options", "an object", options)
            if not stream:
                raise bad_request(
                    "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                    param="stream_options",
                    code="invalid_value",
                )
            include_usage = _opt_bool(options, "include_usage", False)
        tools = body.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise _type_error("tools", "an array", tools)
    elif endpoint is Endpoint.EMBEDDINGS or endpoint is Endpoint.OLLAMA_EMBED:
        _texts(body, "input", required=True)
    elif endpoint is Endpoint.OLLAMA_EMBEDDINGS:
        _texts(body, "prompt", required=False)
    elif endpoint is Endpoint.OLLAMA_CHAT:
        _messages(body, required=False)
    elif endpoint is Endpoint.OLLAMA_GENERATE:
        prompt = body.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise _type_error("prompt", "a string", prompt)
    if endpoint in (Endpoint.OLLAMA_CHAT, Endpoint.OLLAMA_GENERATE):
        options = body.get("options")
        if options is not None and not isinstance(options, dict):
            raise _type_error("options", "an object", options)
        if options:
            max_tokens = _opt_int(options, "num_predict", minimum=-2)
            if max_tokens is not None and max_tokens < 1:
                max_tokens = None
    return Parsed(body, model, stream, include_usage, max_tokens)
