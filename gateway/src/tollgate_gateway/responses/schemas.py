"""The Responses API's pure parts: request checks, the conversation a
``previous_response_id`` rebuilds, and the rewriting of Ollama's answers and events
(our ids, the alias as model, ``store`` and ``previous_response_id`` as we honour them).

Ollama stores nothing and answers ``previous_response_id: null``; the gateway keeps each
response with its conversation (`storage.responses`) and, given a previous id, sends
Ollama the whole conversation as ``input`` items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from tollgate_gateway.chat.schemas import Parsed
from tollgate_gateway.chat.service import new_id
from tollgate_gateway.errors import ApiError, bad_request
from tollgate_gateway.sse import frame

# What Ollama is not told: we honour these ourselves (or they mean nothing to it).
GATEWAY_FIELDS = ("store", "previous_response_id", "metadata", "user", "include")
ID_PREFIXES = ("msg", "fc", "rs")


@dataclass(slots=True)
class ResponsesRequest:
    parsed: Parsed  # the body, model, stream and max_output_tokens
    store: bool
    previous_response_id: str | None
    input: list[Any]  # this request's input, as items


def _json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise bad_request("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(
            400, f"We could not parse the JSON body of your request: {exc}.", code="invalid_json"
        ) from exc
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


def _type_error(name: str, expected: str) -> ApiError:
    return bad_request(
        f"Invalid type for '{name}': expected {expected}.", param=name, code="invalid_type"
    )


def _optional(body: dict[str, Any], name: str, kind: type | tuple[type, ...], expected: str) -> Any:
    value = body.get(name)
    if value is None:
        return None
    ok = (
        isinstance(value, bool)
        if kind is bool
        else (isinstance(value, kind) and not isinstance(value, bool))
    )
    if not ok:
        raise _type_error(name, expected)
    return value


def input_items(value: Any) -> list[Any]:
    """``input`` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise _type_error(f"input[{i}]", "an object")
        return value
    raise _type_error("input", "a string or an array of input items")


def parse_request(raw: bytes) -> ResponsesRequest:
    body = _json_object(raw)
    model = body.get("model")
    if model is None:
        raise bad_request(
            "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
        )
    if not isinstance(model, str) or not model:
        raise _type_error("model", "a non-empty string")
    if body.get("input") is None:
        raise bad_request(
            "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    items = input_items(body["input"])
    stream = _optional(body, "stream", bool, "a boolean") or False
    store = _optional(body, "store", bool, "a boolean")
    previous = _optional(body, "previous_response_id", str, "a string")
    _optional(body, "instructions", str, "a string")
    max_tokens = _optional(body, "max_output_tokens", int, "an integer")
    if max_tokens is not None and max_tokens < 1:
        raise bad_request(
            "'max_output_tokens' must be at least 1.",
            param="max_output_tokens",
            code="invalid_value",
        )
    tools = _optional(body, "tools", list, "an array")
    for i, tool in enumerate(tools or ()):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise _type_error(f"tools[{i}]", "a tool object with a 'type'")
    for name, hi in (("temperature", 2), ("top_p", 1)):
        value = body.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= hi
        ):
            raise bad_request(
                f"'{name}' must be a number between 0 and {hi}.", param=name, code="invalid_value"
            )
    if body.get("background") is True:
        raise bad_request(
            "Background responses are not supported by this server.",
            param="background",
            code="unsupported_value",
        )
    parsed = Parsed(body, model, stream, False, max_tokens)
    return ResponsesRequest(parsed, True if store is None else store, previous, items)


def previous_not_found(response_id: str) -> ApiError:
    return ApiError(
        404,
        f"Previous response with id '{response_id}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
    )


def response_not_found(response_id: str) -> ApiError:
    return ApiError(
        404, f"No response found with id '{response_id}'.", param="response_id", code="not_found"
    )


def output_as_input(output: list[Any]) -> list[Any]:
    """A response's output items as the input items that replay them."""
    items: list[Any] = []
    for item in output:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            texts = [
                {"type": "output_text", "text": part.get("text", "")}
                for part in item.get("content") or ()
                if isinstance(part, dict) and part.get("type") == "output_text"
            ]
            items.append({"type": "message", "role": "assistant", "content": texts})
        elif kind == "function_call":
            items.append(
                {
                    "type": "function_call",
                    "call_id": item.get("call_id", ""),
                    "name": item.get("name", ""),
                    "arguments": item.get("arguments", ""),
                }
            )
        elif kind == "reasoning":
            items.append(
                {k: item[k] for k in ("type", "summary", "encrypted_content") if k in item}
            )
    return items


def listed_item(item: dict[str, Any], item_id: str) -> dict[str, Any]:
    """An input item as ``GET /v1/responses/{id}/input_items`` lists it: with an id, and
    a message's text as content parts (``input_text``, or ``output_text`` for answers)."""
    listed = {"id": item_id, **item}
    if item.get("type", "message") == "message":
        listed["type"] = "message"
        content = item.get("content")
        if isinstance(content, str):
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            listed["content"] = [{"type": part, "text": content}]
        listed.setdefault("status", "completed")
    return listed


def conversation(
    history: list[Any] | None, previous_output: list[Any] | None, items: list[Any]
) -> list[Any]:
    """The input Ollama gets: the earlier conversation, its answer, then the new input."""
    if history is None:
        return list(items)
    return [*history, *output_as_input(previous_output or []), *items]


def upstream_body(body: dict[str, Any], backend_tag: str, items: list[Any]) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k not in GATEWAY_FIELDS}
    out["model"] = backend_tag
    out["input"] = items
    return out


@dataclass(slots=True)
class Rewriter:
    """Our ids in Ollama's answers, consistently within one response and its events."""

    response_id: str
    alias: str
    previous_response_id: str | None
    store: bool
    _ids: dict[str, str] = field(default_factory=dict)

    def item_id(self, upstream: Any) -> Any:
        if not isinstance(upstream, str) or not upstream:
            return upstream
        mine = self._ids.get(upstream)
        if mine is None:
            prefix = upstream.partition("_")[0]
            mine = (prefix if prefix in ID_PREFIXES else "item") + "_" + new_id()
            self._ids[upstream] = mine
        return mine

    def response(self, data: dict[str, Any]) -> dict[str, Any]:
        data["id"] = self.response_id
        data["model"] = self.alias
        data["previous_response_id"] = self.previous_response_id
        data["store"] = self.store
        usage = data.get("usage")
        if isinstance(usage, dict):  # OpenAI's usage has it; Ollama's not yet
            details = usage.setdefault("input_tokens_details", {})
            if isinstance(details, dict):
                details.setdefault("cached_tokens", 0)
                details.setdefault("cache_write_tokens", 0)
        for item in data.get("output") or ():
            if isinstance(item, dict) and "id" in item:
                item["id"] = self.item_id(item["id"])
        return data

    def event(self, data: dict[str, Any]) -> dict[str, Any]:
        response = data.get("response")
        if isinstance(response, dict):
            self.response(response)
        item = data.get("item")
        if isinstance(item, dict) and "id" in item:
            item["id"] = self.item_id(item["id"])
        if "item_id" in data:
            data["item_id"] = self.item_id(data["item_id"])
        return data


def usage_tokens(response: dict[str, Any]) -> tuple[int, int]:
    usage = response.get("usage") or {}
    return int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)


TERMINAL = ("response.completed", "response.failed", "response.incomplete")
DELTAS = ("response.output_text.delta", "response.function_call_arguments.delta")


def error_event(message: str, sequence_number: int) -> bytes:
    return frame(
        "error",
        {
            "type": "error",
            "sequence_number": sequence_number,
            "code": "upstream_error",
            "message": message,
            "param": None,
        },
    )
