"""Ollama v0.24's ``POST /v1/responses`` (``middleware/openai.go``, ``openai/responses.go``).

The request becomes a native chat (``instructions`` a system message, ``input`` the
messages, ``max_output_tokens`` → ``num_predict``); the answer is a Responses object or,
streaming, SSE events with ``event:`` lines. Like Ollama, nothing is stored:
``previous_response_id`` is always null and ``store`` false. Stream events are Go maps
(keys sorted); the whole answer is a Go struct (field order of ``ResponsesResponse``).
"""

from __future__ import annotations

import random
import time
from typing import Any

import orjson
from aiohttp import web

from . import gojson
from .api_openai import openai_error, v1_json
from .generation import Failure, Metrics, serve_generation
from .inference import chat_request
from .state import STATE
from .textgen import Plan, ToolCall
from .wire import SSE_CT, BadRequest, read_json_object

REQ = "openai.ResponsesRequest"


# -- request -----------------------------------------------------------------------------------


def _content_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"{where}: content must be a string or array")
    text = ""
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            text += str(part.get("text") or "")
        elif kind == "input_image":
            continue
        elif kind == "input_file":
            raise BadRequest("file inputs are not currently supported")
        else:
            raise BadRequest(f"{where}: content[{i}]: unknown content type: {kind or ''}")
    return text


def native_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """``FromResponsesRequest``: the native chat messages of a Responses request."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    value = body.get("input")
    if isinstance(value, str):
        if value:
            messages.append({"role": "user", "content": value})
        return messages
    if value is None:
        return messages
    if not isinstance(value, list):
        raise BadRequest("input must be a string or array")
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where}: input item missing required 'type' field")
        kind = item.get("type") or ("message" if item.get("role") else "")
        if kind == "message":
            role = str(item.get("role") or "")
            messages.append({"role": role, "content": _content_text(item.get("content"), where)})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "function": {"name": item.get("name")}}
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _content_text(output, where)
            messages.append({"role": "tool", "content": text})
        elif kind == "reasoning":
            continue
        elif not kind:
            raise BadRequest(f"{where}: input item missing required 'type' field")
        else:
            raise BadRequest(f"{where}: unknown input item type: {orjson.dumps(kind).decode()}")
    return messages


def native_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    tools = body.get("tools") or []
    return [
        {
            "type": t.get("type"),
            "function": {
                "name": t.get("name"),
                "description": t.get("description") or "",
                "parameters": t.get("parameters"),
            },
        }
        for t in tools
        if isinstance(t, dict)
    ]


def _options(body: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {"temperature": body.get("temperature", 1.0)}
    if body.get("top_p") is not None:
        options["top_p"] = body["top_p"]
    if body.get("max_output_tokens") is not None:
        options["num_predict"] = body["max_output_tokens"]
    return options


# -- answers -----------------------------------------------------------------------------------


def _tools_echo(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "type": t.get("type", ""),
            "name": t.get("name", ""),
            "description": t.get("description"),
            "strict": t.get("strict"),
            "parameters": t.get("parameters"),
        }
        for t in body.get("tools") or []
        if isinstance(t, dict)
    ]


def _text_format(body: dict[str, Any]) -> dict[str, Any]:
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict):
        return {"type": "text"}
    out: dict[str, Any] = {"type": fmt.get("type", "")}
    for key in ("name", "schema", "strict"):
        if fmt.get(key) not in (None, ""):
            out[key] = fmt[key]
    return out


def _reasoning(body: dict[str, Any]) -> dict[str, Any] | None:
    reasoning = body.get("reasoning") or {}
    effort, summary = reasoning.get("effort") or None, reasoning.get("summary") or None
    if effort is None and summary is None:
        return None
    return {"effort": effort, "summary": summary}


def _usage(plan: Plan) -> dict[str, Any]:
    return {
        "input_tokens": plan.prompt_tokens,
        "output_tokens": plan.eval_count,
        "total_tokens": plan.prompt_tokens + plan.eval_count,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }


def _go_float(value: Any) -> Any:
    """A float64 field defaulting to 1, as Go writes it (``1``, not ``1.0``)."""
    if value is None:
        return 1
    return int(value) if isinstance(value, float) and value.is_integer() else value


def response_object(
    body: dict[str, Any],
    response_id: str,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    created_at: int,
    completed_at: int | None,
) -> dict[str, Any]:
    """``ResponsesResponse``, fields in Go's order."""
    instructions = body.get("instructions") or None
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "completed_at": completed_at,
        "status": status,
        "incomplete_details": None,
        "model": model,
        "previous_response_id": None,
        "instructions": instructions,
        "output": output,
        "error": None,
        "tools": _tools_echo(body),
        "tool_choice": "auto",
        "truncation": body.get("truncation") or "disabled",
        "parallel_tool_calls": True,
        "text": {"format": _text_format(body)},
        "top_p": _go_float(body.get("top_p")),
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "top_logprobs": 0,
        "temperature": _go_float(body.get("temperature")),
        "reasoning": _reasoning(body),
        "usage": usage,
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "store": False,
        "background": body.get("background") is True,
        "service_tier": "default",
        "metadata": {},
        "safety_identifier": None,
        "prompt_cache_key": None,
    }


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _call_item(item_id: str, call: ToolCall, status: str, arguments: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call.id,
        "name": call.name,
        "arguments": arguments,
    }


class ResponsesSse:
    """``ResponsesStreamConverter``: the event sequence of one streamed response."""

    content_type = SSE_CT
    stream_headers = {"Cache-Control": "no-cache"}  # the middleware sets it (and keep-alive)

    def __init__(self, model: str, body: dict[str, Any]) -> None:
        self.model = model
        self.body = body
        self.id = f"resp_{random.randrange(999999)}"  # noqa: S311 - Ollama's ids are small ints
        self.item_id = f"msg_{random.randrange(999999)}"  # noqa: S311
        self.seq = 0
        self.created = False
        self.content_started = False
        self.calls_sent = False
        self.text = ""
        self.call_items: list[dict[str, Any]] = []

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        data = {**data, "type": kind, "sequence_number": self.seq}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + gojson.marshal_map(data) + b"\n\n"

    def _response(self, status: str, output: list[dict[str, Any]], usage: Any) -> dict[str, Any]:
        now = int(time.time())
        return response_object(self.body, self.id, self.model, status, output, usage, now, None)

    def _start(self) -> bytes:
        if self.created:
            return b""
        self.created = True
        return self._event(
            "response.created", {"response": self._response("in_progress", [], None)}
        ) + self._event(
            "response.in_progress", {"response": self._response("in_progress", [], None)}
        )

    def piece(self, text: str, first: bool) -> bytes:
        out = self._start()
        if self.calls_sent or not text:
            return out
        if not self.content_started:
            self.content_started = True
            item = {
                "id": self.item_id,
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            out += self._event("response.output_item.added", {"output_index": 0, "item": item})
            out += self._event(
                "response.content_part.added",
                {
                    "item_id": self.item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "part": _output_text(""),
                },
            )
        self.text += text
        return out + self._event(
            "response.output_text.delta",
            {
                "item_id": self.item_id,
                "output_index": 0,
                "content_index": 0,
                "delta": text,
                "logprobs": [],
            },
        )

    def tool_calls(self, calls: list[ToolCall], first: bool) -> bytes:
        out = self._start()
        for i, call in enumerate(calls):
            item_id = f"fc_{random.randrange(999999)}_{i}"  # noqa: S311
            arguments = gojson.marshal(call.arguments).decode()
            self.call_items.append(_call_item(item_id, call, "completed", arguments))
            added = _call_item(item_id, call, "in_progress", "")
            out += self._event("response.output_item.added", {"output_index": i, "item": added})
            if arguments:
                out += self._event(
                    "response.function_call_arguments.delta",
                    {"item_id": item_id, "output_index": i, "delta": arguments},
                )
            out += self._event(
                "response.function_call_arguments.done",
                {"item_id": item_id, "output_index": i, "arguments": arguments},
            )
            done = _call_item(item_id, call, "completed", arguments)
            out += self._event("response.output_item.done", {"output_index": i, "item": done})
        self.calls_sent = True
        return out

    def _final_output(self) -> list[dict[str, Any]]:
        if self.call_items:
            return list(self.call_items)
        if self.content_started:
            message = {
                "id": self.item_id,
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [_output_text(self.text)],
            }
            return [message]
        return []

    def done(self, plan: Plan, metrics: Metrics, first: bool) -> bytes:
        out = self._start()
        if not self.calls_sent and self.content_started:
            ids = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
            out += self._event(
                "response.output_text.done", {**ids, "text": self.text, "logprobs": []}
            )
            out += self._event(
                "response.content_part.done", {**ids, "part": _output_text(self.text)}
            )
            out += self._event(
                "response.output_item.done", {"output_index": 0, "item": self._final_output()[0]}
            )
        response = self._response("completed", self._final_output(), _usage(plan))
        response["completed_at"] = int(time.time())
        return out + self._event("response.completed", {"response": response})

    def midstream_error(self, message: str, first: bool) -> bytes:
        # The middleware decodes Ollama's {"error": ...} line as an empty chat chunk: no
        # event but the opening ones, and the stream ends without response.completed.
        return self._start()

    def whole(self, plan: Plan, metrics: Metrics) -> web.Response:
        output: list[dict[str, Any]]
        if plan.tool_calls:
            output = [
                _call_item(
                    f"fc_{self.id}_{i}", c, "completed", gojson.marshal(c.arguments).decode()
                )
                for i, c in enumerate(plan.tool_calls)
            ]
        else:
            output = [
                {
                    "id": self.item_id,
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [_output_text(plan.text)],
                }
            ]
        now = int(time.time())
        body = response_object(
            self.body, self.id, self.model, "completed", output, _usage(plan), now, now
        )
        return v1_json(body)

    def idle(self, reason: str) -> web.Response:
        empty = Plan([], reason, 0, 0)
        if self.body.get("stream") is True:
            stream = self.done(empty, _ZERO, True)
            return web.Response(body=stream, headers={"Content-Type": SSE_CT})
        return self.whole(empty, _ZERO)

    def failure(self, status: int, message: str) -> web.Response:
        return openai_error(status, message)


_ZERO = Metrics(1, 1, 0, 1, 0, 1)


async def responses(request: web.Request) -> web.StreamResponse:
    try:
        body = await read_json_object(request, gojson.RESPONSES, "EOF")
        native = {
            "model": body.get("model") or "",
            "messages": native_messages(body),
            "tools": native_tools(body),
            "options": _options(body),
            "stream": body.get("stream") is True,
        }
        effort = (body.get("reasoning") or {}).get("effort")
        if effort and effort not in ("none", "low", "medium", "high", "max"):
            raise BadRequest(
                f'invalid reasoning value: "{effort}" (must be "high", "medium", "low", '
                '"max", or "none")'
            )
        gen = chat_request(request.app[STATE], native)
    except BadRequest as exc:
        return openai_error(400, str(exc), middleware=True)
    encoder = ResponsesSse(str(native["model"]), body)
    if isinstance(gen, Failure):
        return openai_error(gen.status, gen.message)
    return await serve_generation(request, gen, encoder)
